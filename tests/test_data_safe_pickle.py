"""The restricted unpickler reads plain data from any protocol and refuses everything else."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest

from metasparse.data import safe_pickle


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class _Custom:
    pass


PLAIN = {
    "data": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3),
    "labels": [3, 7],
    "catname2label": {"n01": 3, "n02": 7},
    "f": np.float32(1.5),
    "i": np.int64(-4),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "raw": b"\x89PNG\r\n",
    "ordered": collections.OrderedDict(a=1),
    "nested": [(1, 2.0, "x", None, True)],
}


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_plain_data_round_trips(protocol):
    out = safe_pickle.loads(pickle.dumps(PLAIN, protocol=protocol))
    assert out.keys() == PLAIN.keys()
    for key, value in PLAIN.items():
        if isinstance(value, np.ndarray):
            assert out[key].dtype == value.dtype and np.array_equal(out[key], value)
        else:
            assert out[key] == value


def test_python2_str_decoded_as_latin1():
    # protocol-2 BINSTRING opcodes, as Python 2's cPickle wrote str objects
    blob = b"\x80\x02}q\x00U\x04dataq\x01U\x03\xe9t\xe9q\x02s."
    assert safe_pickle.loads(blob) == {"data": "été"}


@pytest.mark.parametrize(
    "obj",
    [_Evil(), _Custom(), np.array([1, "a"], dtype=object), np.ma.masked_array([1, 2])],
    ids=["os.system", "custom-class", "object-array", "ndarray-subclass"],
)
def test_refuses_anything_but_plain_data(obj):
    with pytest.raises(ValueError, match="refusing"):
        safe_pickle.loads(pickle.dumps(obj, protocol=2))


def test_truncated_and_missing(tmp_path):
    path = tmp_path / "x.pickle"
    path.write_bytes(pickle.dumps(PLAIN, protocol=2)[:-20])
    with pytest.raises(ValueError, match=r"x\.pickle .*(truncated|corrupt)"):
        safe_pickle.load(path)
    with pytest.raises(FileNotFoundError, match=r"nope\.pkl; check the dataset root, or download"):
        safe_pickle.load(tmp_path / "nope.pkl")


def test_dump_is_readable_by_both(tmp_path):
    safe_pickle.dump(PLAIN, tmp_path / "a.pickle")
    blob = (tmp_path / "a.pickle").read_bytes()
    assert blob[:2] == b"\x80\x02"  # protocol 2, like the MetaOptNet files
    assert safe_pickle.load(tmp_path / "a.pickle")["labels"] == [3, 7]
    assert pickle.loads(blob)["catname2label"] == {"n01": 3, "n02": 7}
