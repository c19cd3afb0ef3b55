"""The dataset contract the episode sampler relies on: images grouped by class."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

Transform = Callable[[Tensor], Tensor]


class FewShotDataset(Dataset):
    """A split of a few-shot benchmark: ``labels[i]`` is the class (0..num_classes-1) of item i.

    Subclasses implement :meth:`load_image` returning a uint8 tensor (C, H, W); ``transform``
    (applied in :meth:`__getitem__`) turns it into the float tensor the backbone eats.
    """

    def __init__(
        self, labels: np.ndarray, class_names: list[str], transform: Transform | None = None
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.transform = transform
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(class_names)):
            raise ValueError("labels must index class_names")
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(len(class_names) + 1))
        self._by_class = [order[bounds[c] : bounds[c + 1]] for c in range(len(class_names))]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices_by_class(self) -> list[np.ndarray]:
        """Item indices of each class, in class order."""
        return self._by_class

    def load_image(self, index: int) -> Tensor:
        """The raw image of item ``index`` as a uint8 tensor (C, H, W)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.labels.size)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        elif image.dtype == torch.uint8:
            image = image.float().div_(255.0)
        return image, int(self.labels[index])


class ArrayDataset(FewShotDataset):
    """A split held as one uint8 array (N, H, W, C) or (N, H, W) — in memory or memory-mapped."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: list[str],
        transform: Transform | None = None,
    ) -> None:
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if images.ndim not in (3, 4):
            raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got {images.shape}")
        if len(images) != len(labels):
            raise ValueError(
                f"images and labels disagree in length: {len(images)} images, {len(labels)} labels"
            )
        super().__init__(labels, class_names, transform)
        self.images = images

    def load_image(self, index: int) -> Tensor:
        # copy: the array may be a read-only memmap, which torch must not alias
        t = torch.from_numpy(np.array(self.images[index], copy=True))
        return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
