"""Per-benchmark transforms: MetaOptNet augmentation at train time, plain normalisation at test."""

from __future__ import annotations

import pytest
import torch

from metasparse.data.transforms import build_transform, native_image_size, normalization


@pytest.mark.parametrize("name", ["miniimagenet", "tieredimagenet", "cifar-fs", "fc100"])
def test_test_transform_is_exact_normalisation(name):
    size = native_image_size(name)
    img = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    out = build_transform(name, train=False)(img)
    mean, std = normalization(name)
    expected = (img.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[
        :, None, None
    ]
    assert out.dtype == torch.float32 and out.shape == (3, size, size)
    torch.testing.assert_close(out, expected)
    # deterministic: no randomness at test time
    assert torch.equal(out, build_transform(name, train=False)(img))


@pytest.mark.parametrize("name", ["miniimagenet", "cifar-fs"])
def test_train_transform_augments(name):
    size = native_image_size(name)
    img = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    tf = build_transform(name, train=True)
    torch.manual_seed(0)
    outs = [tf(img) for _ in range(8)]
    assert all(o.shape == (3, size, size) and o.dtype == torch.float32 for o in outs)
    assert not all(torch.equal(outs[0], o) for o in outs[1:])  # random crop / jitter / flip
    plain = build_transform(name, train=False)(img)
    assert not any(torch.equal(plain, o) for o in outs)
    # padding is zero-filled: some crops show the pad border at normalised black
    black = (0 - torch.tensor(normalization(name)[0])) / torch.tensor(normalization(name)[1])
    assert any(
        torch.allclose(o[:, 0, 0], black, atol=1e-5) for o in outs + [tf(img) for _ in range(40)]
    )


def test_resize_and_unknown_name():
    img = torch.randint(0, 256, (3, 84, 84), dtype=torch.uint8)
    assert build_transform("miniimagenet", train=True, image_size=64)(img).shape == (3, 64, 64)
    assert build_transform("miniimagenet", train=False, image_size=64)(img).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="no transform defined for dataset 'imagenet'"):
        build_transform("imagenet", train=True)
    with pytest.raises(ValueError, match="at least 8"):
        build_transform("fc100", train=True, image_size=2)
