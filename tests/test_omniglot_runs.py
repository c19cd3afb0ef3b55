"""The one-shot challenge layout: write runs then read them back, and every malformed layout."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from metasparse.data import omniglot
from metasparse.data.omniglot_runs import held_out_alphabets, read_runs, write_runs


def glyph_png(char: int, drawer: int) -> bytes:
    """A 105×105 mode-'1' PNG: a box whose place encodes the character, shifted by the drawer."""
    img = Image.new("1", (105, 105), 1)
    x0, y0 = 8 + 12 * (char % 6) + drawer, 8 + 12 * (char // 6)
    for x in range(x0, x0 + 10):
        for y in range(y0, y0 + 10):
            img.putpixel((x, y), 0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def eval_zip(tmp_path):
    path = tmp_path / "images_evaluation.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for a, alphabet in enumerate(("Aa", "Bb", "Cc")):
            for c in range(1, 7 + a):
                for d in range(1, 5):
                    name = f"images_evaluation/{alphabet}/character{c:02d}/{a}{c:02d}_{d:02d}.png"
                    zf.writestr(name, glyph_png(c, d))
    return path


def test_write_then_read_round_trip(tmp_path, eval_zip):
    out = tmp_path / "runs"
    dirs = write_runs(out, eval_zip, n_runs=4, ways=5, seed=1, alphabets=["Aa", "Bb", "Cc"])
    assert [d.name for d in dirs] == ["run01", "run02", "run03", "run04"]
    assert sorted((out / "run01" / "training").iterdir())[0].name == "class01.png"
    line = (out / "run02" / "class_labels.txt").read_text().splitlines()[0]
    assert line.startswith("run02/test/item01.png run02/training/class")
    runs = read_runs(out)
    sources = json.loads((out / "sources.json").read_text(encoding="utf-8"))["runs"]
    assert len(runs) == 4
    with zipfile.ZipFile(eval_zip) as zf:
        for run, src in zip(runs, sources, strict=True):
            assert run.support.shape == (5, 1, 28, 28) and run.query.shape == (5, 1, 28, 28)
            assert sorted(run.query_labels.tolist()) == list(range(5))
            assert src["train_drawer"] != src["test_drawer"]
            assert {c.split("/")[0] for c in src["classes"]} == {src["alphabet"]}
            for i, item in enumerate(src["items"]):
                k = run.query_labels[i].item()
                assert src["classes"][k].endswith(item["character"])
                # Query i is character classes[k] by the test drawer, preprocessed as in training.
                a = "AaBbCc".index(src["alphabet"]) // 2
                c = int(item["character"][-2:])
                raw = zf.read(
                    f"images_evaluation/{src['alphabet']}/{item['character']}/"
                    f"{a}{c:02d}_{src['test_drawer']:02d}.png"
                )
                expected = torch.from_numpy(omniglot.preprocess_png(raw, 28)).float() / 255
                assert torch.equal(run.query[i, 0], expected)
            # Same character, other drawer: the matching support image is the nearest one.
            d = torch.cdist(run.query.flatten(1), run.support.flatten(1))
            assert torch.equal(d.argmin(1), run.query_labels)
    # The original PNG bytes are copied, not re-encoded.
    assert (out / "run01" / "test" / "item01.png").read_bytes().startswith(b"\x89PNG")


def test_write_runs_is_deterministic_and_seeded(tmp_path, eval_zip):
    kwargs = dict(n_runs=3, ways=4, alphabets=["Aa", "Bb"])
    write_runs(tmp_path / "a", eval_zip, seed=5, **kwargs)
    write_runs(tmp_path / "b", eval_zip, seed=5, **kwargs)
    write_runs(tmp_path / "c", eval_zip, seed=6, **kwargs)
    text = {k: (tmp_path / k / "run01" / "class_labels.txt").read_text() for k in "abc"}
    sources = {
        k: json.loads((tmp_path / k / "sources.json").read_text(encoding="utf-8"))["runs"]
        for k in "abc"
    }
    assert text["a"] == text["b"] and sources["a"] == sources["b"]
    assert sources["a"] != sources["c"]
    with pytest.raises(FileExistsError, match="already holds run01"):
        write_runs(tmp_path / "a", eval_zip, seed=5, **kwargs)


def test_write_runs_errors(tmp_path, eval_zip):
    with pytest.raises(FileNotFoundError, match=r"images_evaluation.zip"):
        write_runs(tmp_path / "out", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has 9 characters"):
        write_runs(tmp_path / "out", eval_zip, ways=9, alphabets=["Aa", "Bb"])
    with pytest.raises(ValueError, match=r"\['Zz'\] are not in .*; it holds Aa, Bb"):
        write_runs(tmp_path / "out", eval_zip, alphabets=["Zz"])
    with pytest.raises(ValueError, match="n_runs"):
        write_runs(tmp_path / "out", eval_zip, n_runs=0)


@pytest.fixture
def good_runs(tmp_path, eval_zip):
    out = tmp_path / "runs"
    write_runs(out, eval_zip, n_runs=2, ways=4, alphabets=["Cc"])
    return out


def test_read_runs_layout_errors(tmp_path, good_runs):
    with pytest.raises(FileNotFoundError, match=r"all_runs.zip"):
        read_runs(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no runNN folders"):
        read_runs(tmp_path / "empty")
    labels = good_runs / "run01" / "class_labels.txt"
    original = labels.read_text()

    labels.write_text(original.replace(" run01/training", "\trun01/training", 1).replace("\t", ""))
    with pytest.raises(ValueError, match="cannot parse"):
        read_runs(good_runs)
    labels.write_text(original.replace("training/class01.png", "training/class77.png"))
    with pytest.raises(ValueError, match=r"class77.png, which does not exist"):
        read_runs(good_runs)
    labels.write_text("\n".join(original.splitlines()[1:]) + "\n")
    with pytest.raises(ValueError, match=r"labels 3 test images but .* holds 4"):
        read_runs(good_runs)
    labels.write_text(original.splitlines()[0] + "\n" + original)
    with pytest.raises(ValueError, match="labeled twice; keep one line per test image"):
        read_runs(good_runs)
    labels.unlink()
    with pytest.raises(ValueError, match=r"class_labels.txt is missing"):
        read_runs(good_runs)
    labels.write_text(original)
    for png in (good_runs / "run02" / "training").iterdir():
        png.unlink()
    with pytest.raises(ValueError, match=r"holds no training/classMM.png images"):
        read_runs(good_runs)


def test_labels_relative_to_the_run_folder_are_accepted(good_runs):
    """Some copies of the runs write 'test/item01.png training/class03.png' lines."""
    labels = good_runs / "run01" / "class_labels.txt"
    before = read_runs(good_runs)[0]
    labels.write_text(labels.read_text().replace("run01/", ""))
    after = read_runs(good_runs)[0]
    assert torch.equal(before.query_labels, after.query_labels)


@pytest.mark.realdata
def test_real_runs_from_held_out_alphabets(shared_data, tmp_path):
    root = shared_data / "omniglot"
    out = tmp_path / "runs"
    write_runs(out, root)  # the official shape: 20 runs of 20-way one-shot
    runs = read_runs(out)
    sources = json.loads((out / "sources.json").read_text(encoding="utf-8"))["runs"]
    assert len(runs) == 20
    held_out = set(held_out_alphabets())
    assert len(held_out) == 12 and "Gurmukhi" not in held_out  # partly trained on by Vinyals
    for run, src in zip(runs, sources, strict=True):
        assert run.support.shape == (20, 1, 28, 28) and run.query.shape == (20, 1, 28, 28)
        assert sorted(run.query_labels.tolist()) == list(range(20))
        assert src["alphabet"] in held_out and src["train_drawer"] != src["test_drawer"]
        assert float(run.support.mean()) < 0.3  # bright strokes on black, as in training
    # Pixel-space 1-NN is far from perfect but above chance (5%) — the task is real.
    acc = np.mean(
        [
            float(
                (torch.cdist(r.query.flatten(1), r.support.flatten(1)).argmin(1) == r.query_labels)
                .float()
                .mean()
            )
            for r in runs
        ]
    )
    assert 0.07 < acc < 0.6
