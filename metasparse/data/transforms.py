"""Per-benchmark image transforms: MetaOptNet's training augmentation and plain test preprocessing.

Training (Lee et al. 2019, their data loaders): random crop with zero padding (8 px at 84×84,
4 px at 32×32), colour jitter (brightness, contrast, saturation 0.4), horizontal flip, then
normalisation with the dataset's pixel mean/std. Testing: resize (only if the size differs) and
normalise. Inputs are uint8 tensors (C, H, W) as :meth:`FewShotDataset.load_image` returns.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

# Pixel statistics (0..255) MetaOptNet normalises with.
_MINI_MEAN = (120.39586422, 115.59361427, 104.54012653)
_MINI_STD = (70.68188272, 68.27635443, 72.54505529)
_CIFAR_MEAN = (129.37731888, 124.10583864, 112.47758569)
_CIFAR_STD = (68.20947949, 65.43124043, 70.45866994)

# name -> (native image size, crop padding at native size, mean, std)
_SPECS: dict[str, tuple[int, int, tuple[float, ...], tuple[float, ...]]] = {
    "miniimagenet": (84, 8, _MINI_MEAN, _MINI_STD),
    "tieredimagenet": (84, 8, _MINI_MEAN, _MINI_STD),
    "cifar-fs": (32, 4, _CIFAR_MEAN, _CIFAR_STD),
    "fc100": (32, 4, _CIFAR_MEAN, _CIFAR_STD),
}


def native_image_size(dataset_name: str) -> int:
    """The side length the benchmark's images are stored at (84 or 32)."""
    return _spec(dataset_name)[0]


def normalization(dataset_name: str) -> tuple[list[float], list[float]]:
    """The (mean, std) in [0, 1] units that ``dataset_name`` is normalised with."""
    _, _, mean, std = _spec(dataset_name)
    return [m / 255.0 for m in mean], [s / 255.0 for s in std]


def build_transform(dataset_name: str, train: bool, image_size: int | None = None) -> v2.Compose:
    """The transform for ``dataset_name``: MetaOptNet augmentation if ``train``, else plain.

    Args:
        dataset_name: one of miniimagenet, tieredimagenet, cifar-fs, fc100.
        train: random crop + colour jitter + flip (training episodes) or resize only (testing).
        image_size: output side length; defaults to the benchmark's native size. The crop padding
            scales with it (8 px at 84, 4 px at 32).

    Returns:
        A callable mapping a uint8 (C, H, W) tensor to a normalised float32 (C, S, S) tensor.
    """
    native, pad, _, _ = _spec(dataset_name)
    size = native if image_size is None else int(image_size)
    if size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    mean, std = normalization(dataset_name)
    steps: list[torch.nn.Module] = []
    if size != native:
        steps.append(v2.Resize((size, size), antialias=True))
    if train:
        padding = max(1, round(pad * size / native))
        steps += [
            v2.RandomCrop(size, padding=padding),
            v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
            v2.RandomHorizontalFlip(),
        ]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def _spec(dataset_name: str) -> tuple[int, int, tuple[float, ...], tuple[float, ...]]:
    if dataset_name not in _SPECS:
        raise ValueError(
            f"no transform defined for dataset {dataset_name!r}; choose one of "
            f"{', '.join(sorted(_SPECS))}"
        )
    return _SPECS[dataset_name]
