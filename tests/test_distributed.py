"""Distributed training (torch.distributed, gloo on the CPU): two processes train as one does.

One ``torch.multiprocessing.spawn`` of two processes runs every distributed scenario (starting
processes costs more than the tiny runs themselves); the tests compare what they wrote with
single-process runs here. The last test starts ``torchrun`` itself, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_training import tiny_config

from metasparse.checkpoint import load_checkpoint
from metasparse.data import build_dataset
from metasparse.data.episodes import episode_loader
from metasparse.model import FewShotModel
from metasparse.training import Trainer

REPO = Path(__file__).resolve().parents[1]
WORLD = 2


def small_config(tmp: Path, name: str, **train_overrides) -> object:
    """A few steps of a tiny Conv-4 ProtoNet on the glyphs (test_training's tiny config); 4
    episodes per batch, so each of the two processes embeds 2, and 10 validation episodes in
    batches of 4: three batches, split 1 + 2 between the processes."""
    shape = {"episodes_per_batch": 4, "batches_per_epoch": 3, "epochs": 1, "log_every": 1}
    return tiny_config(tmp, name, val_episodes=10, **{**shape, "device": "cpu", **train_overrides})


def _recording(trainer: Trainer) -> list[float]:
    """Make ``trainer`` record the loss of every step it takes."""
    losses: list[float] = []
    step = trainer.step

    def recorded(batch):
        metrics, times = step(batch)
        losses.append(metrics["loss"])
        return metrics, times

    trainer.step = recorded
    return losses


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------- the spawned processes
def _scenarios(rank: int, tmp: Path) -> dict:
    """Everything the tests check, run in each of the two processes."""
    from metasparse.evaluation import evaluate

    out: dict = {}
    # 1. one epoch of 3 steps, then the same validation episodes in one process
    trainer = Trainer(small_config(tmp, "ddp"), progress=False)
    out["losses"] = _recording(trainer)
    trainer.fit()
    out["state"] = _params(trainer.model)
    out["history"] = trainer.history
    v = trainer.cfg.val
    alone = evaluate(
        trainer.model, trainer.val_set, v.way, v.shot, v.query, v.episodes, seed=v.seed,
        episodes_per_batch=v.episodes_per_batch,
    )  # fmt: skip
    out["val_alone"] = {k: alone[k] for k in ("accuracy", "ci95", "per_episode_accuracy")}
    out["val_alone"]["head_stats"] = alone["head_stats"]

    # 2. stopped after 4 of 6 steps (mid epoch 1) and resumed, beside an uninterrupted run
    groups = {"epochs": 2, "bn_group_episodes": 2}
    Trainer(small_config(tmp, "whole", **groups), progress=False).fit()
    Trainer(small_config(tmp, "cut", **groups), progress=False).fit(max_steps=4)
    Trainer(small_config(tmp, "cut", **groups), resume=True, progress=False).fit()
    Trainer(small_config(tmp, "two_to_one", **groups), progress=False).fit(max_steps=4)

    # 3. a NaN loss in one process's share stops every process at the same step
    trainer = Trainer(small_config(tmp, "nan"), progress=False)
    before = _params(trainer.model)
    if rank == 1:
        forward = trainer.model.head.forward

        def nan_logits(*args, **kwargs):
            logits, stats = forward(*args, **kwargs)
            return logits * float("nan"), stats

        trainer.model.head.forward = nan_logits
    try:
        trainer.fit()
    except FloatingPointError as exc:
        out["nan_error"] = str(exc)
    out["nan_step"] = trainer.global_step
    out["nan_unchanged"] = all(
        torch.equal(p.detach(), before[k]) for k, p in trainer.model.named_parameters()
    )

    # 4. a batch that cannot be split evenly; BatchNorm groups larger than a process's share
    try:
        Trainer(small_config(tmp, "odd", episodes_per_batch=3), progress=False)
    except ValueError as exc:
        out["odd_error"] = str(exc)
    try:
        Trainer(small_config(tmp, "wide", bn_group_episodes=4), progress=False)
    except ValueError as exc:
        out["wide_error"] = str(exc)
    return out


def run_scenarios(
    rank: int, world: int, rendezvous: str, tmp: str, scenarios: Callable[[int, Path], dict]
) -> None:
    """One process of ``mp.spawn``: join the gloo group, run ``scenarios(rank, tmp)`` and save
    what it returns as ``result_rank<r>.pt`` in ``tmp``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        result = scenarios(rank, Path(tmp))
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(tmp) / f"result_rank{rank}.pt")


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The output folder and each rank's results of :func:`_scenarios` in two processes."""
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp")
    args = (WORLD, str(tmp / "rendezvous"), str(tmp), _scenarios)
    mp.spawn(run_scenarios, args=args, nprocs=WORLD, join=True)
    return tmp, [torch.load(tmp / f"result_rank{r}.pt") for r in range(WORLD)]


# ----------------------------------------------------------------- the tests
def test_two_processes_match_one_process_with_per_shard_bn_groups(spawned, tmp_path):
    tmp, (rank0, rank1) = spawned
    # one process, BatchNorm over groups of 2 episodes: what each of the two processes does
    single = Trainer(small_config(tmp_path, "single", bn_group_episodes=2), progress=False)
    losses = _recording(single)
    single.fit()
    # The same arithmetic up to the order of sums: the all-reduce averages the processes'
    # gradients and losses where one process sums over the whole batch (the head's gradient in
    # one backward pass, the loss as one float32 mean), so results may differ in the last bits.
    # Measured here: losses within 2e-7 (the float64 mean of two float32 shard losses against
    # one float32 mean), weights identical (with two processes the rescaling by 1/2 is exact,
    # which more processes or another reduction order on a GPU need not keep); 1e-5 is a
    # hundredfold margin over float32 rounding through three SGD steps, and far below the
    # 2e-2 the weights move when BatchNorm normalises the whole batch instead of each share.
    torch.testing.assert_close(rank0["losses"], losses, rtol=1e-6, atol=1e-6)
    assert rank1["losses"] == rank0["losses"]  # the logged values are the global batch's
    ckpt = load_checkpoint(tmp / "ddp/checkpoints/last.pt")["model"]
    for key, value in single.model.state_dict().items():  # BatchNorm running stats included
        torch.testing.assert_close(ckpt[key], value, rtol=1e-5, atol=1e-6, msg=key)
        assert torch.equal(rank0["state"][key], rank1["state"][key]), key  # in step
        assert torch.equal(ckpt[key], rank0["state"][key]), key
    assert set(ckpt) == set(single.model.state_dict())  # no DDP "module." prefixes


def test_distributed_validation_equals_one_process_on_the_same_episodes(spawned):
    _, (rank0, rank1) = spawned
    # the validation after the epoch, its episodes split 1 + 2 batches between the processes,
    # equals the whole validation run in one process: the same batches, so the same numbers
    val = rank0["history"][-1]
    alone = rank0["val_alone"]
    assert (val["val_accuracy"], val["val_ci95"]) == (alone["accuracy"], alone["ci95"])
    assert val["val_head_stats"] == alone["head_stats"]
    assert rank1["history"][-1]["val_accuracy"] == val["val_accuracy"]
    assert len(alone["per_episode_accuracy"]) == 10


def test_a_stopped_distributed_run_resumes_to_the_uninterrupted_weights(spawned):
    tmp, _ = spawned
    whole = load_checkpoint(tmp / "whole/checkpoints/last.pt")
    cut = load_checkpoint(tmp / "cut/checkpoints/last.pt")
    assert cut["global_step"] == whole["global_step"] == 6
    for key, value in whole["model"].items():
        torch.testing.assert_close(cut["model"][key], value, rtol=0, atol=0, msg=key)
    assert [h["val_accuracy"] for h in cut["history"]] == [
        h["val_accuracy"] for h in whole["history"]
    ]


def test_a_two_process_checkpoint_resumes_in_one_process(spawned, tmp_path):
    tmp, _ = spawned
    # stopped by two processes after 4 steps; its config groups BatchNorm by 2 episodes, so
    # one process continues with the statistics the two processes used
    cfg = small_config(tmp, "two_to_one", epochs=2, bn_group_episodes=2)
    assert load_checkpoint(tmp / "two_to_one/checkpoints/last.pt")["global_step"] == 4
    resumed = Trainer(cfg, resume=True, progress=False)
    assert (resumed.epoch, resumed.step_in_epoch) == (1, 1)
    summary = resumed.fit()
    assert summary["global_step"] == 6 and summary["epoch"] == 2
    whole = load_checkpoint(tmp / "whole/checkpoints/last.pt")["model"]
    for key, value in resumed.model.state_dict().items():
        # float tolerance: see test_two_processes_match_one_process_with_per_shard_bn_groups
        torch.testing.assert_close(value, whole[key], rtol=1e-5, atol=1e-6, msg=key)


def test_a_nonfinite_loss_in_one_process_stops_every_process(spawned):
    tmp, results = spawned
    for rank, out in enumerate(results):
        # the loss checked is the global batch's mean, so both processes see the NaN
        assert "step 0: loss nan is not finite" in out.get("nan_error", ""), rank
        assert out["nan_step"] == 0 and out["nan_unchanged"], rank
        assert f"nonfinite_step0_rank{rank}.pt" in out["nan_error"]
        dump = torch.load(tmp / f"nan/nonfinite_step0_rank{rank}.pt", weights_only=True)
        assert dump["batch"]["support"].shape[0] == 2  # this process's share of the batch


def test_episodes_per_batch_not_divisible_by_world_size_is_a_clear_error(spawned):
    _, results = spawned
    for out in results:
        assert out["odd_error"] == (
            "train.episodes_per_batch=3 cannot be split evenly across 2 processes "
            "(WORLD_SIZE=2): each process embeds an equal share of every batch; use a multiple "
            "of 2 (e.g. train.episodes_per_batch=4) or start a number of processes that "
            "divides 3"
        )


def test_bn_groups_wider_than_a_process_share_are_a_clear_error(spawned):
    _, results = spawned
    for out in results:
        assert out["wide_error"] == (
            "train.bn_group_episodes=4 does not divide the 2 episodes each of the 2 processes "
            "embeds (train.episodes_per_batch=4 / 2); use a divisor of 2, or 0 for one group "
            "per process"
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


def test_a_partial_torchrun_environment_is_a_clear_error(monkeypatch):
    from metasparse import distributed

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.from_environment() == distributed.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1: one process, as today
    assert distributed.from_environment() == distributed.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"WORLD_SIZE is set but RANK is not; start .* torchrun"):
        distributed.from_environment()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.from_environment() == distributed.Context(1, 2, 1)


def test_commands_other_than_train_refuse_to_run_under_torchrun(monkeypatch, capsys):
    from metasparse.cli import main

    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert main(["test", "--checkpoint", "none.pt"]) == 2
    assert capsys.readouterr().err == (
        "metasparse: error: metasparse test does not run distributed (WORLD_SIZE=2): only "
        "metasparse train does; run metasparse test without torchrun\n"
    )


# ----------------------------------------------------------------- torchrun, as a user runs it
def test_torchrun_writes_one_set_of_checkpoints_and_logs(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",  # the `torchrun` console script, from this interpreter
        "--standalone",
        f"--nproc_per_node={WORLD}",
        "-m",
        "metasparse",
        "train",
        "--config",
        str(REPO / "configs/glyphs/conv4_proto.yaml"),
        "train.epochs=1",
        "train.batches_per_epoch=2",
        "train.device=cpu",
        "val.episodes=8",
        f"output_dir={run}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    events = [f for f in files if f.startswith("tb/")]
    assert len(events) == 1, files
    assert [f for f in files if f not in events] == [
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "config.yaml",
        "history.json",
    ]
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 1 and history[0]["step"] == 2
    # printed by rank 0 alone: one epoch line, one summary
    assert proc.stdout.count("epoch 1/1: val") == 1, proc.stdout
    assert proc.stdout.count('"global_step": 2') == 1, proc.stdout
    ckpt = load_checkpoint(run / "checkpoints/last.pt")
    assert ckpt["global_step"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
