"""Episodic sampling: N-way K-shot tasks as a pure function of (seed, epoch, episode index).

Every random choice of episode ``i`` in epoch ``e`` — its classes, its examples and the torch RNG
that augmentations draw from — comes from ``numpy.random.SeedSequence([seed, epoch, i])``. So an
episode is the same whatever the number of DataLoader workers, a resumed run replays exactly, and a
fixed ``(seed, epoch)`` is a fixed validation/test set shared by every model evaluated on it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from metasparse.data.base import ArrayDataset, FewShotDataset

_MASK64 = (1 << 64) - 1


def _describe(dataset: FewShotDataset) -> str:
    """A short name for error messages, e.g. ``split 'test' of omniglot``."""
    name = getattr(dataset, "name", None)
    split = getattr(dataset, "split", None)
    if name and split:
        return f"split {split!r} of {name}"
    if name:
        return str(name)
    return f"this {type(dataset).__name__}"


def check_episode_config(
    dataset: FewShotDataset, way: int, shot: int, query: int, num_episodes: int | None = None
) -> None:
    """Raise ``ValueError`` naming the problem when ``dataset`` cannot supply such episodes."""
    for key, value in (("way", way), ("shot", shot), ("query", query)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if num_episodes is not None and (
        isinstance(num_episodes, bool)
        or not isinstance(num_episodes, int | np.integer)
        or num_episodes < 1
    ):
        raise ValueError(f"num_episodes must be a positive integer, got {num_episodes!r}")
    n_classes = dataset.num_classes
    if way > n_classes:
        raise ValueError(
            f"N-way {way} but {_describe(dataset)} has only {n_classes} classes; "
            f"lower the way to at most {n_classes}"
        )
    sizes = np.array([len(ix) for ix in dataset.indices_by_class()], dtype=np.int64)
    need = shot + query
    if sizes.size and sizes.min() < need:
        smallest = int(sizes.argmin())
        raise ValueError(
            f"shot + query = {shot} + {query} = {need} images per class, but class "
            f"{dataset.class_names[smallest]!r} of {_describe(dataset)} has only "
            f"{int(sizes.min())} (the smallest class); lower shot or query to sum to at most "
            f"{int(sizes.min())}"
        )


def episode_seed(seed: int, epoch: int, index: int) -> np.random.SeedSequence:
    """The seed sequence that fixes every random choice of one episode."""
    return np.random.SeedSequence([seed & _MASK64, epoch & _MASK64, index & _MASK64])


class EpisodeDataset(Dataset):
    """``num_episodes`` N-way K-shot episodes drawn from ``dataset``; item ``i`` is episode ``i``.

    Each item is a dict: ``support`` (way*shot, C, H, W) float, ``support_labels`` (way*shot,)
    int64 in ``[0, way)``, ``query`` (way*query, C, H, W), ``query_labels`` (way*query,), and
    ``classes`` (way,) — the dataset class id behind each episode label. Examples are laid out
    class-major (all examples of label 0, then label 1, ...); label ``k`` is ``classes[k]``, a
    random class, so the layout carries no information.
    """

    def __init__(
        self,
        dataset: FewShotDataset,
        way: int,
        shot: int,
        query: int,
        num_episodes: int,
        seed: int,
        epoch: int = 0,
    ) -> None:
        check_episode_config(dataset, way, shot, query, num_episodes)
        self.dataset = dataset
        self.way, self.shot, self.query = int(way), int(shot), int(query)
        self.num_episodes = int(num_episodes)
        self.seed = int(seed)
        self.epoch = int(epoch)
        by_class = dataset.indices_by_class()
        self._sizes = np.array([len(ix) for ix in by_class], dtype=np.int64)
        # Padded (classes, max_size) table of item indices: sampling is index arithmetic.
        table = np.full((len(by_class), int(self._sizes.max())), -1, dtype=np.int64)
        for c, ix in enumerate(by_class):
            table[c, : len(ix)] = ix
        self._table = table
        self._labels_support = np.repeat(np.arange(self.way), self.shot)
        self._labels_query = np.repeat(np.arange(self.way), self.query)
        # Fast path: untransformed in-memory arrays are gathered in one indexing operation.
        self._array = (
            dataset.images
            if isinstance(dataset, ArrayDataset) and dataset.transform is None
            else None
        )

    def set_epoch(self, epoch: int) -> None:
        """Switch to the episodes of ``epoch`` (training draws new tasks every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_episodes

    def sample_indices(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Classes (way,) and item indices (way, shot+query) of episode ``index``."""
        rng = np.random.default_rng(episode_seed(self.seed, self.epoch, index))
        classes = rng.choice(len(self._sizes), size=self.way, replace=False)
        keys = rng.random((self.way, self._table.shape[1]))
        keys[np.arange(self._table.shape[1])[None, :] >= self._sizes[classes][:, None]] = 2.0
        cols = np.argsort(keys, axis=1, kind="stable")[:, : self.shot + self.query]
        items = np.take_along_axis(self._table[classes], cols, axis=1)
        return classes.astype(np.int64), items

    def _load(self, flat: np.ndarray) -> Tensor:
        if self._array is not None:
            arr = torch.from_numpy(np.ascontiguousarray(self._array[flat]))
            arr = arr.unsqueeze(1) if arr.dim() == 3 else arr.permute(0, 3, 1, 2)
            return arr.float().div_(255.0)
        return torch.stack([self.dataset[int(i)][0] for i in flat])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range [0, {self.num_episodes})")
        classes, items = self.sample_indices(index)
        support = items[:, : self.shot].reshape(-1)
        query = items[:, self.shot :].reshape(-1)
        torch_seed = int(episode_seed(self.seed, self.epoch, index).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed)
            images = self._load(np.concatenate([support, query]))
        n_s = support.size
        return {
            "support": images[:n_s],
            "support_labels": torch.from_numpy(self._labels_support.copy()),
            "query": images[n_s:],
            "query_labels": torch.from_numpy(self._labels_query.copy()),
            "classes": torch.from_numpy(classes),
        }


def episode_loader(
    dataset: FewShotDataset,
    way: int,
    shot: int,
    query: int,
    episodes_per_batch: int,
    num_batches: int,
    seed: int,
    epoch: int = 0,
    num_workers: int = 0,
    start_batch: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Batches of ``episodes_per_batch`` episodes stacked on a leading task dimension.

    Batch ``b`` holds episodes ``b*episodes_per_batch ...`` of epoch ``epoch``; ``start_batch``
    skips the first batches without sampling them (exact resume in the middle of an epoch).
    With ``world_size`` > 1, process ``rank`` gets its contiguous share of each batch: episodes
    ``b*episodes_per_batch + rank*share ...`` (``share = episodes_per_batch / world_size``), so
    the shares of all processes together are the batch one process would get.
    """
    for key, value in (("episodes_per_batch", episodes_per_batch), ("num_batches", num_batches)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if not 0 <= start_batch <= num_batches:
        raise ValueError(
            f"start_batch must be in [0, num_batches={num_batches}], got {start_batch}"
        )
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if not (world_size >= 1 and 0 <= rank < world_size and episodes_per_batch % world_size == 0):
        raise ValueError(
            f"rank {rank} of world_size {world_size} cannot take an equal share of "
            f"{episodes_per_batch} episodes per batch; need 0 <= rank < world_size and "
            "episodes_per_batch divisible by world_size"
        )
    episodes = EpisodeDataset(
        dataset, way, shot, query, episodes_per_batch * num_batches, seed=seed, epoch=epoch
    )
    # The loader's own base seed comes from a private generator, so creating an iterator does not
    # consume the global torch RNG (the training step's dropout etc. stays reproducible).
    generator = torch.Generator()
    generator.manual_seed(int(episode_seed(seed, epoch, -1).generate_state(1)[0]) & (2**63 - 1))
    if world_size == 1:
        share, order = episodes_per_batch, range(start_batch * episodes_per_batch, len(episodes))
    else:
        share = episodes_per_batch // world_size
        order = [
            b * episodes_per_batch + rank * share + i
            for b in range(start_batch, num_batches)
            for i in range(share)
        ]
    return DataLoader(
        episodes,
        batch_size=share,
        sampler=order,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator,
    )


__all__ = ["EpisodeDataset", "check_episode_config", "episode_loader", "episode_seed"]
