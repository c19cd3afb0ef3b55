"""Pieces of distributed training that one process can check: shares of a batch, BatchNorm
groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metasparse.config import from_dict
from metasparse.data import build_dataset
from metasparse.data.episodes import episode_loader
from metasparse.model import FewShotModel


def small_config(tmp: Path, name: str, **train_overrides) -> object:
    """A few steps of a tiny Conv-4 ProtoNet on the glyphs; 4 episodes per batch, so each of
    the two processes embeds 2."""
    train_cfg = {
        "way": 5,
        "shot": 1,
        "query": 3,
        "episodes_per_batch": 4,
        "batches_per_epoch": 3,
        "epochs": 1,
        "lr": 0.05,
        "lr_schedule": [[1, 0.5]],
        "log_every": 1,
        "seed": 3,
        "device": "cpu",
    }
    train_cfg.update(train_overrides)
    return from_dict(
        {
            "name": name,
            "output_dir": str(tmp / name),
            "data": {"name": "glyphs", "augment": False},
            "model": {
                "backbone": "conv4",
                "backbone_options": {"hidden": 16, "out_channels": 16},
                "head": "proto",
            },
            "train": train_cfg,
            # 10 episodes in batches of 4: three batches, split 1 + 2 between the processes
            "val": {"way": 5, "shot": 1, "query": 3, "episodes": 10, "episodes_per_batch": 4},
        }
    )


# ----------------------------------------------------------------- single-process pieces
def test_the_shares_of_a_batch_make_up_the_batch():
    data = build_dataset("glyphs", "val", augment=False)
    args = (data, 5, 1, 2, 4, 3)

    def batches(**kw):
        return list(episode_loader(*args, seed=7, epoch=2, start_batch=1, **kw))

    whole = batches()
    shares = [batches(rank=r, world_size=2) for r in range(2)]
    assert len(whole) == len(shares[0]) == 2
    for b, batch in enumerate(whole):
        for key, value in batch.items():
            joined = torch.cat([shares[0][b][key], shares[1][b][key]])
            assert torch.equal(joined, value), key
    with pytest.raises(ValueError, match="equal share of 4 episodes"):
        batches(rank=0, world_size=3)


def test_bn_groups_normalise_each_group_apart_and_average_the_running_stats():
    torch.manual_seed(0)
    cfg = small_config(Path("unused"), "x").model
    model = FewShotModel.from_config(cfg, in_channels=1).train()
    support, query = torch.rand(4, 5, 1, 28, 28), torch.rand(4, 10, 1, 28, 28)
    bn = model.backbone.modules()
    bn = next(m for m in bn if isinstance(m, torch.nn.BatchNorm2d))
    start = {k: v.clone() for k, v in bn.named_buffers()}
    stats = []
    parts = []
    for g in (slice(0, 2), slice(2, 4)):  # each group alone, from the same running stats
        for k, v in start.items():
            getattr(bn, k).copy_(v)
        parts.append(model.embed(support[g], query[g]))
        stats.append(bn.running_mean.clone())
    for k, v in start.items():
        getattr(bn, k).copy_(v)
    f_s, f_q = model.embed(support, query, group_episodes=2)
    torch.testing.assert_close(f_s, torch.cat([parts[0][0], parts[1][0]]), rtol=0, atol=0)
    torch.testing.assert_close(f_q, torch.cat([parts[0][1], parts[1][1]]), rtol=0, atol=0)
    torch.testing.assert_close(bn.running_mean, (stats[0] + stats[1]) / 2)
    assert int(bn.num_batches_tracked) == int(start["num_batches_tracked"]) + 1
    # one group (0, or as many episodes as the batch) is today's single pass
    whole = model.embed(support, query)
    assert not torch.allclose(whole[0], f_s)  # the batch statistics do differ
