"""The episode sampler: determinism (workers, epochs, resume), relabeling, layout, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from metasparse.data.base import ArrayDataset
from metasparse.data.episodes import EpisodeDataset, episode_loader


def toy_dataset(n_classes=12, per_class=8, size=6, transform=None, sizes=None):
    """Images whose pixels encode their item index, so every sample can be traced back."""
    sizes = sizes or [per_class] * n_classes
    labels = np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])
    rng = np.random.default_rng(0)
    order = rng.permutation(labels.size)  # items of a class are not contiguous
    labels = labels[order]
    images = np.zeros((labels.size, size, size), dtype=np.uint8)
    images[:, 0, 0] = np.arange(labels.size) % 256
    images[:, 0, 1] = np.arange(labels.size) // 256
    images[:, 1:, :] = rng.integers(0, 256, size=(labels.size, size - 1, size))
    ds = ArrayDataset(images, labels, [f"c{c}" for c in range(len(sizes))], transform=transform)
    ds.name, ds.split = "toy", "test"
    return ds


def item_ids(images: torch.Tensor) -> np.ndarray:
    """Recover item indices from the pixel code of :func:`toy_dataset`."""
    code = torch.round(images[..., 0, 0, :2] * 255).long().numpy()
    return code[..., 0] + 256 * code[..., 1]


def test_episode_shapes_labels_and_classes():
    ds = toy_dataset()
    ep = EpisodeDataset(ds, way=5, shot=2, query=3, num_episodes=4, seed=0)[1]
    assert ep["support"].shape == (10, 1, 6, 6) and ep["support"].dtype == torch.float32
    assert ep["query"].shape == (15, 1, 6, 6)
    assert ep["support_labels"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ep["query_labels"].tolist() == sorted([0, 1, 2, 3, 4] * 3)
    assert ep["support_labels"].dtype == torch.int64 and ep["classes"].dtype == torch.int64
    classes = ep["classes"].numpy()
    assert len(set(classes.tolist())) == 5 and classes.min() >= 0 and classes.max() < 12
    # Relabeling: episode label k is dataset class classes[k]; support and query are disjoint.
    s_ids, q_ids = item_ids(ep["support"]), item_ids(ep["query"])
    assert np.array_equal(ds.labels[s_ids], classes[ep["support_labels"].numpy()])
    assert np.array_equal(ds.labels[q_ids], classes[ep["query_labels"].numpy()])
    assert len(set(s_ids.tolist()) | set(q_ids.tolist())) == 25
    assert torch.all((ep["support"] >= 0) & (ep["support"] <= 1))


def test_same_seed_same_episodes_and_epochs_differ():
    ds = toy_dataset()
    a = EpisodeDataset(ds, 5, 1, 2, num_episodes=6, seed=7)
    b = EpisodeDataset(ds, 5, 1, 2, num_episodes=6, seed=7)
    for i in range(6):
        for key in a[i]:
            assert torch.equal(a[i][key], b[i][key])
    first = [a[i]["classes"].tolist() for i in range(6)]
    a.set_epoch(1)
    assert [a[i]["classes"].tolist() for i in range(6)] != first
    other = EpisodeDataset(ds, 5, 1, 2, num_episodes=6, seed=8)
    assert [other[i]["classes"].tolist() for i in range(6)] != first
    assert len({tuple(c) for c in first}) > 1  # episodes within an epoch differ too


def test_episodes_cover_all_classes_roughly_uniformly():
    ds = toy_dataset(n_classes=10, per_class=5)
    eps = EpisodeDataset(ds, 5, 1, 1, num_episodes=400, seed=0)
    counts = np.bincount(
        np.concatenate([eps.sample_indices(i)[0] for i in range(400)]), minlength=10
    )
    assert counts.min() > 150 and counts.max() < 250  # expectation 200 each


def test_zero_and_two_workers_identical_with_random_augmentation():
    aug = v2.Compose([v2.RandomAffine(degrees=30), v2.ToDtype(torch.float32, scale=True)])
    ds = toy_dataset(size=12, transform=aug)
    kwargs = dict(episodes_per_batch=3, num_batches=4, seed=5, epoch=2)
    torch.manual_seed(123)
    serial = list(episode_loader(ds, 4, 2, 2, num_workers=0, **kwargs))
    torch.manual_seed(999)  # the global RNG must not matter
    parallel = list(episode_loader(ds, 4, 2, 2, num_workers=2, **kwargs))
    assert len(serial) == len(parallel) == 4
    for x, y in zip(serial, parallel, strict=True):
        assert x["support"].shape == (3, 8, 1, 12, 12)
        assert x["classes"].shape == (3, 4)
        for key in x:
            assert torch.equal(x[key], y[key]), key
    # The augmentation really is random across episodes (not a fixed transform).
    assert not torch.equal(serial[0]["support"][0], serial[0]["support"][1])


def test_sampling_leaves_global_rng_alone():
    ds = toy_dataset(size=12, transform=v2.RandomAffine(degrees=30))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for _ in episode_loader(ds, 3, 1, 1, episodes_per_batch=2, num_batches=2, seed=1):
        pass
    assert torch.equal(torch.rand(3), expected)


def test_start_batch_resumes_exactly():
    ds = toy_dataset()
    full = list(episode_loader(ds, 3, 1, 2, episodes_per_batch=2, num_batches=5, seed=3, epoch=1))
    resumed = list(
        episode_loader(
            ds, 3, 1, 2, episodes_per_batch=2, num_batches=5, seed=3, epoch=1, start_batch=3
        )
    )
    assert len(resumed) == 2
    for x, y in zip(full[3:], resumed, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert len(list(episode_loader(ds, 3, 1, 2, 2, 5, seed=3, start_batch=5))) == 0


def test_transform_path_matches_fast_path():
    """Untransformed arrays are gathered in bulk; the per-item path must give the same floats."""
    ds = toy_dataset()
    fast = EpisodeDataset(ds, 4, 2, 3, 3, seed=0)
    slow = EpisodeDataset(ds, 4, 2, 3, 3, seed=0)
    slow._array = None  # force the per-item path (dataset[i] → FewShotDataset.__getitem__)
    a, b = fast[2], slow[2]
    for key in a:
        assert torch.equal(a[key], b[key])


def test_unequal_class_sizes_sample_only_existing_items():
    ds = toy_dataset(n_classes=6, sizes=[3, 9, 4, 20, 3, 5])
    eps = EpisodeDataset(ds, 6, 1, 2, num_episodes=30, seed=0)
    for i in range(30):
        classes, items = eps.sample_indices(i)
        assert (items >= 0).all()
        assert np.array_equal(ds.labels[items], np.repeat(classes[:, None], 3, axis=1))
        assert all(len(set(row.tolist())) == 3 for row in items)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((30, 1, 1, 5), "N-way 30 but split 'test' of toy has only 12 classes"),
        ((5, 4, 5, 5), r"shot \+ query = 4 \+ 5 = 9 .*has only 8 \(the smallest class\)"),
        ((0, 1, 1, 5), "way must be a positive integer"),
        ((5, 0, 1, 5), "shot must be a positive integer"),
        ((5, 1, -2, 5), "query must be a positive integer"),
        ((5, 1, 1, 0), "num_episodes must be a positive integer"),
    ],
)
def test_bad_configurations_raise_clear_errors(args, message):
    with pytest.raises(ValueError, match=message):
        EpisodeDataset(toy_dataset(), *args, seed=0)


def test_loader_argument_errors():
    ds = toy_dataset()
    with pytest.raises(ValueError, match="start_batch must be in"):
        episode_loader(ds, 3, 1, 1, episodes_per_batch=2, num_batches=3, seed=0, start_batch=4)
    with pytest.raises(ValueError, match="episodes_per_batch must be a positive integer"):
        episode_loader(ds, 3, 1, 1, episodes_per_batch=0, num_batches=3, seed=0)
    with pytest.raises(ValueError, match="smallest class"):
        episode_loader(toy_dataset(sizes=[2, 9, 9]), 3, 1, 2, 2, 3, seed=0)


def test_sampling_on_many_classes_is_consistent():
    """5000 classes: every episode has distinct classes and items drawn from those classes.

    (Its speed is a benchmark matter, not a timed unit test.)
    """
    labels = np.repeat(np.arange(5000), 20)
    ds = ArrayDataset(
        np.zeros((labels.size, 4, 4), np.uint8), labels, [str(i) for i in range(5000)]
    )
    eps = EpisodeDataset(ds, 20, 5, 5, num_episodes=200, seed=0)
    for i in range(200):
        classes, items = eps.sample_indices(i)
        assert len(set(classes.tolist())) == 20
        assert (labels[items] == classes[:, None]).all()
        assert all(len(set(row.tolist())) == 10 for row in items)
