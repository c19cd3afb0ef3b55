"""The meta-training loop on the built-in glyphs: learning, exact resume, checkpoints, logging."""

from __future__ import annotations

import pytest
import torch

from metasparse.checkpoint import load_checkpoint, model_from_checkpoint
from metasparse.config import from_dict
from metasparse.training import Trainer, lr_factor, train


def tiny_config(tmp_path, name="run", head="proto", val_episodes=8, **train_overrides):
    train_cfg = {
        "way": 5,
        "shot": 1,
        "query": 3,
        "episodes_per_batch": 2,
        "batches_per_epoch": 4,
        "epochs": 2,
        "lr": 0.05,
        "lr_schedule": [[1, 0.5]],
        "log_every": 2,
        "seed": 3,
    }
    train_cfg.update(train_overrides)
    return from_dict(
        {
            "name": name,
            "output_dir": str(tmp_path / name),
            "data": {"name": "glyphs", "augment": False},
            "model": {
                "backbone": "conv4",
                "backbone_options": {"hidden": 16, "out_channels": 16},
                "head": head,
            },
            "train": train_cfg,
            "val": {
                "way": 5,
                "shot": 1,
                "query": 3,
                "episodes": val_episodes,
                "episodes_per_batch": 4,
            },
        }
    )


def test_lr_factor_steps():
    sched = [[20, 0.06], [40, 0.012], [50, 0.0024]]
    assert [lr_factor(sched, e) for e in (0, 19, 20, 39, 40, 50, 59)] == [
        1.0,
        1.0,
        0.06,
        0.06,
        0.012,
        0.0024,
        0.0024,
    ]


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path):
    full = train(tiny_config(tmp_path, "full"), progress=False)
    # Stop mid-epoch 1 (as a kill right after a checkpoint would), then resume to the end.
    cfg = tiny_config(tmp_path, "killed")
    part = train(cfg, progress=False, max_steps=3)
    assert part["stopped_early"] and part["global_step"] == 3 and part["epoch"] == 0
    resumed = train(cfg, resume=True, progress=False)
    assert resumed["global_step"] == full["global_step"] == 8
    assert [h["val_accuracy"] for h in resumed["history"]] == [
        h["val_accuracy"] for h in full["history"]
    ]
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")["model"]
    b = load_checkpoint(tmp_path / "killed/checkpoints/last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_resume_needs_flag_and_same_config(tmp_path):
    cfg = tiny_config(tmp_path, "r", epochs=1)
    train(cfg, progress=False)
    with pytest.raises(ValueError, match="pass --resume"):
        Trainer(cfg)
    changed = tiny_config(tmp_path, "r", epochs=2, lr=0.2)
    with pytest.raises(ValueError, match=r"train\.lr"):
        Trainer(changed, resume=True)
    longer = tiny_config(tmp_path, "r", epochs=2)  # extending the schedule is allowed
    assert train(longer, resume=True, progress=False)["epoch"] == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trainer(tiny_config(tmp_path, "fresh"), resume=True)


def test_checkpoints_tensorboard_and_history(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path, "logs", epochs=1)
    train(cfg, progress=False)
    run = cfg.run_dir
    assert (run / "config.yaml").is_file() and (run / "history.json").is_file()
    ckpt = load_checkpoint(run / "checkpoints/best.pt")  # weights_only=True inside
    model, loaded_cfg = model_from_checkpoint(ckpt)
    assert loaded_cfg.model.head == "proto" and not model.training
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/accuracy",
        "train/lr",
        "time/data",
        "time/backbone",
        "time/head",
        "val/accuracy",
        "val/ci95",
    ):
        assert tag in tags, tags
    assert not list(run.rglob("*.tmp"))


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="unreadable"):
        load_checkpoint(bad)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a metasparse checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_training_learns_above_chance(tmp_path):
    cfg = tiny_config(tmp_path, "learn", shot=5, query=6, batches_per_epoch=15, epochs=1)
    cfg.val.episodes = 40
    summary = train(cfg, progress=False)
    assert summary["best_val_accuracy"] > 35.0  # chance is 20%


@pytest.mark.parametrize("decay", [True, False])
def test_scale_weight_decay_switch(tmp_path, decay):
    # with scale_weight_decay off, the logit scale sits in a parameter group without decay
    # and the backbone keeps the configured decay
    cfg = tiny_config(tmp_path, weight_decay=0.01, scale_weight_decay=decay)
    trainer = Trainer(cfg, progress=False)
    scale = trainer.model.head.scale
    groups = trainer.optimizer.param_groups
    owner = [g for g in groups if any(p is scale for p in g["params"])]
    assert len(owner) == 1 and owner[0]["weight_decay"] == (0.01 if decay else 0.0)
    assert all(g["weight_decay"] == 0.01 for g in groups if g is not owner[0])
    assert sum(len(g["params"]) for g in groups) == len(list(trainer.model.parameters()))


def test_adam_optimizer_trains_and_resumes(tmp_path):
    # ProtoNets' recipe uses Adam: its moments travel in the checkpoint, so a resumed run
    # matches an uninterrupted one
    full = tiny_config(tmp_path, "full", optimizer="adam", lr=1e-3)
    trainer = Trainer(full, progress=False)
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    trainer.fit()
    cut = tiny_config(tmp_path, "cut", optimizer="adam", lr=1e-3)
    Trainer(cut, progress=False).fit(max_steps=3)
    resumed = Trainer(cut, resume=True, progress=False)
    resumed.fit()
    for a, b in zip(
        trainer.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)
    # the wall time of training and validation adds up across the two processes
    elapsed = [h["elapsed_seconds"] for h in resumed.history]
    assert 0 < elapsed[0] < elapsed[1] == resumed.elapsed


def test_unknown_optimizer_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown train\.optimizer 'adamw'.*sgd, adam"):
        Trainer(tiny_config(tmp_path, optimizer="adamw"), progress=False)


def test_checkpoint_without_newer_config_keys_resumes(tmp_path):
    # a run written before a config key existed resumes with that key at its default
    cfg = tiny_config(tmp_path)
    Trainer(cfg, progress=False).fit(max_steps=2)
    last = cfg.run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    del ckpt["config"]["train"]["optimizer"], ckpt["config"]["train"]["scale_weight_decay"]
    torch.save(ckpt, last)
    Trainer(cfg, resume=True, progress=False).fit()


def _weights(model):
    # the parameters (BatchNorm's running statistics do move in the failed forward pass)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_nonfinite_loss_stops_before_the_weights_change(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), progress=False)
    before = _weights(trainer.model)
    head = trainer.model.head
    original = head.forward

    def nan_logits(*args, **kwargs):
        logits, stats = original(*args, **kwargs)
        return logits * float("nan"), stats

    head.forward = nan_logits
    with pytest.raises(FloatingPointError, match=r"step 0: loss nan is not finite.*not updated"):
        trainer.fit()
    for key, value in trainer.model.named_parameters():
        torch.testing.assert_close(value.detach(), before[key], rtol=0, atol=0)
    dump = torch.load(trainer.run_dir / "nonfinite_step0.pt", weights_only=True)
    assert set(dump["batch"]) >= {"support", "query", "support_labels", "query_labels"}
    assert dump["global_step"] == 0


def test_nonfinite_gradient_is_named_and_stops_the_step(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), progress=False)
    before = _weights(trainer.model)
    name, param = next(iter(trainer.model.backbone.named_parameters()))
    param.register_hook(lambda g: g * float("inf"))
    with pytest.raises(FloatingPointError, match=rf"a gradient is not finite.*backbone\.{name}"):
        trainer.fit()
    for key, value in trainer.model.named_parameters():
        torch.testing.assert_close(value.detach(), before[key], rtol=0, atol=0)


def test_checkpoint_missing_keys_and_mismatched_weights_are_clear_errors(tmp_path):
    cfg = tiny_config(tmp_path)
    Trainer(cfg, progress=False).fit(max_steps=1)
    last = cfg.run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)

    no_opt = {k: v for k, v in ckpt.items() if k != "optimizer"}
    torch.save(no_opt, last)
    with pytest.raises(ValueError, match="lacks optimizer, so training cannot resume"):
        Trainer(cfg, resume=True, progress=False)

    torch.save({k: v for k, v in ckpt.items() if k != "model"}, last)
    with pytest.raises(ValueError, match="lacks model"):
        load_checkpoint(last)

    ckpt["config"]["model"]["backbone_options"]["hidden"] = 8  # weights are for 16
    with pytest.raises(ValueError, match="do not fit the model its config builds"):
        model_from_checkpoint(ckpt)


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    # a real kill: `metasparse train` in a child process, SIGKILLed once a mid-epoch checkpoint
    # is on disk, then resumed here; weights and metrics must equal an uninterrupted run's
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    overrides = {"batches_per_epoch": 6, "checkpoint_every": 1, "log_every": 1}
    full = train(tiny_config(tmp_path, "full", **overrides), progress=False)
    cfg = tiny_config(tmp_path, "killed", **overrides)
    cfg_file = tmp_path / "killed.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the child is `metasparse train` whose steps past the 7th each last a second more, so that
    # the steps 8-11 the kill aims at cannot all pass between two polls on a busy machine
    child_script = tmp_path / "slow_train.py"
    child_script.write_text(
        "import sys, time\n"
        "from metasparse import training\n"
        "from metasparse.cli import main\n"
        "step = training.Trainer.step\n"
        "def slow_step(self, batch):\n"
        "    out = step(self, batch)\n"
        "    if self.global_step >= 7:\n"
        "        time.sleep(1.0)\n"
        "    return out\n"
        "training.Trainer.step = slow_step\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    child = subprocess.Popen(
        [sys.executable, str(child_script), "train", "--config", str(cfg_file), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    last = cfg.run_dir / "checkpoints" / "last.pt"
    killed_at = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if last.is_file():
                step = load_checkpoint(last)["global_step"]
                if 8 <= step < 12 and step % 6:  # mid-epoch 1
                    child.send_signal(signal.SIGKILL)
                    killed_at = step
                    break
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert killed_at is not None, child.stderr.read().decode()[-2000:]
    assert child.returncode == -signal.SIGKILL
    (last.parent / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # as a kill leaves
    resumed = train(cfg, resume=True, progress=False)
    assert not list(last.parent.glob(".*.tmp"))  # resume cleans half-written files away
    assert resumed["global_step"] == full["global_step"] == 12
    assert [h["val_accuracy"] for h in resumed["history"]] == [
        h["val_accuracy"] for h in full["history"]
    ]
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")["model"]
    b = load_checkpoint(last)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_checkpoint_holding_objects_is_refused_without_unsafe_advice(tmp_path):
    from fractions import Fraction  # any class outside torch's weights_only allow-list

    path = tmp_path / "objects.pt"
    torch.save({"format": "x", "thing": Fraction(1, 3)}, path)
    with pytest.raises(ValueError, match="holds objects other than tensors") as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)


def _flip_a_payload_byte(path):
    """Damage a checkpoint on disk the way a bad sector would: one byte of the weights."""
    outer = torch.load(path, weights_only=True)
    payload = outer["payload"].clone()
    payload[len(payload) // 2] ^= 0xFF
    torch.save({**outer, "payload": payload}, path)


def test_a_damaged_checkpoint_is_detected_and_the_previous_one_resumes(tmp_path):
    cfg = tiny_config(tmp_path, "damaged", checkpoint_every=2)
    Trainer(cfg, progress=False).fit(max_steps=5)  # last.pt at step 5, previous.pt at step 4
    ckpt_dir = cfg.run_dir / "checkpoints"
    assert load_checkpoint(ckpt_dir / "previous.pt")["global_step"] == 4
    _flip_a_payload_byte(ckpt_dir / "last.pt")
    with pytest.raises(ValueError, match=r"corrupt \(its SHA-256 .*--resume previous"):
        Trainer(cfg, resume=True, progress=False)
    resumed = Trainer(cfg, resume="previous", progress=False)
    assert resumed.global_step == 4
    resumed.fit()
    # the run continued from step 4 ends where an uninterrupted run ends
    whole = tiny_config(tmp_path, "whole", checkpoint_every=2)
    Trainer(whole, progress=False).fit()
    a = load_checkpoint(ckpt_dir / "last.pt")["model"]
    b = load_checkpoint(whole.run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_names_previous_when_last_is_missing(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "lost", checkpoint_every=2)
    Trainer(cfg, progress=False).fit(max_steps=3)
    (cfg.run_dir / "checkpoints" / "last.pt").unlink()  # a kill between the two renames
    with pytest.raises(FileNotFoundError, match=r"previous\.pt exists: pass --resume previous"):
        Trainer(cfg, resume=True, progress=False)
    assert Trainer(cfg, resume="previous", progress=False).global_step == 2


def test_checkpoints_of_the_first_format_still_load(tmp_path):
    state = {"format": "metasparse-checkpoint-v1", "config": {}, "in_channels": 1, "model": {}}
    torch.save(state, tmp_path / "v1.pt")
    assert load_checkpoint(tmp_path / "v1.pt")["in_channels"] == 1
