"""Mixed precision (``model.backbone_precision``) and ``model.compile`` of the backbone.

The backbone runs under autocast, the head gets float32 features; float16 trains with a loss
scaler whose skipped steps do not stop training, while a non-finite loss still does; the
scaler's state resumes; a compiled backbone's checkpoint has the plain module's keys.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_training import tiny_config

from metasparse.checkpoint import load_checkpoint, load_model_state, model_from_checkpoint
from metasparse.config import ModelConfig
from metasparse.model import FewShotModel
from metasparse.precision import check_autocast
from metasparse.training import Trainer, train

CPU = torch.device("cpu")


def precision_config(tmp_path, name, precision, **train_overrides):
    cfg = tiny_config(tmp_path, name, **train_overrides)
    cfg.model.backbone_precision = precision
    return cfg


def _record_dtypes(trainer: Trainer) -> dict[str, set[torch.dtype]]:
    """Record the dtype of the head's inputs and of the first convolution's output (in
    training and in eval mode) while ``trainer`` runs."""
    seen: dict[str, set[torch.dtype]] = {"head": set(), "conv_train": set(), "conv_eval": set()}
    head = trainer.model.head
    forward = head.forward

    def recorded(query, support, *args, **kwargs):
        seen["head"] |= {query.dtype, support.dtype}
        return forward(query, support, *args, **kwargs)

    head.forward = recorded
    conv = next(m for m in trainer.model.backbone.modules() if isinstance(m, torch.nn.Conv2d))

    def hook(module, inputs, output):
        seen["conv_train" if module.training else "conv_eval"].add(output.dtype)

    conv.register_forward_hook(hook)
    return seen


def test_bfloat16_backbone_trains_with_float32_head_inputs(tmp_path):
    cfg = precision_config(tmp_path, "bf16", "bfloat16", batches_per_epoch=3, epochs=1)
    trainer = Trainer(cfg, progress=False)
    seen = _record_dtypes(trainer)
    summary = trainer.fit()  # 3 steps, then validation
    assert seen == {
        "head": {torch.float32},  # cast at the backbone/head boundary
        "conv_train": {torch.bfloat16},
        "conv_eval": {torch.bfloat16},  # validation runs under the same autocast
    }
    means = summary["history"][0]["train_means"]
    assert torch.isfinite(torch.tensor(means["loss"]))
    assert not any(k.startswith("amp/") for k in means)  # bfloat16 needs no loss scaler
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    # the checkpoint tests in the precision it trained in
    model, _ = model_from_checkpoint(load_checkpoint(cfg.run_dir / "checkpoints" / "last.pt"))
    assert model.precision == "bfloat16"


def test_float32_default_is_the_plain_path(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), progress=False)
    seen = _record_dtypes(trainer)
    assert trainer.model.precision == "float32" and trainer.scaler is None
    trainer.fit(max_steps=1)
    assert seen["conv_train"] == {torch.float32} and seen["head"] == {torch.float32}
    ckpt = load_checkpoint(trainer.ckpt_dir / "last.pt")
    assert "scaler" not in ckpt and ckpt["config"]["model"]["backbone_precision"] == "float32"
    # no autocast and no cast: the features are the backbone's own output, bitwise
    model = trainer.model.eval()
    images = torch.rand(2, 3, 1, 28, 28)
    f_s, _ = model.embed(images, images)
    with torch.no_grad():
        plain = model.backbone(images.flatten(0, 1)).flatten(1)
    assert torch.equal(f_s.detach().flatten(0, 1), plain)


def test_bfloat16_run_resumes_to_the_uninterrupted_weights(tmp_path):
    full = train(precision_config(tmp_path, "full", "bfloat16"), progress=False)
    cfg = precision_config(tmp_path, "cut", "bfloat16")
    train(cfg, progress=False, max_steps=3)
    resumed = train(cfg, resume=True, progress=False)
    assert resumed["global_step"] == full["global_step"] == 8
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # the precision is part of the run: resuming in another one is refused
    other = precision_config(tmp_path, "cut", "float32", epochs=3)
    with pytest.raises(ValueError, match=r"cannot resume.*model\.backbone_precision"):
        Trainer(other, resume=True, progress=False)


def _overflow_once(trainer: Trainer, at_step: int = 0) -> None:
    """Make one backbone gradient infinite at ``at_step``, as a float16 overflow would."""
    param = next(iter(trainer.model.backbone.parameters()))
    param.register_hook(lambda g: g * float("inf") if trainer.global_step == at_step else g)


def test_float16_skips_overflowed_steps_and_resumes_the_loss_scale(tmp_path):
    # an uninterrupted float16 run and one stopped at step 3, both overflowing at step 0
    full = Trainer(precision_config(tmp_path, "full", "float16"), progress=False)
    _overflow_once(full)
    before = {k: v.detach().clone() for k, v in full.model.named_parameters()}
    metrics, _ = full.step(next(iter(_loader(full))))  # step 0: skipped, not stopped
    assert metrics["amp/skipped"] == 1.0 and metrics["amp/loss_scale"] == 65536.0
    assert full.scaler.get_scale() == 32768.0
    for key, value in full.model.named_parameters():  # the weights were not updated
        torch.testing.assert_close(value.detach(), before[key], rtol=0, atol=0, msg=key)

    full = Trainer(precision_config(tmp_path, "whole", "float16"), progress=False)
    _overflow_once(full)
    full.fit()
    cfg = precision_config(tmp_path, "cut", "float16")
    cut = Trainer(cfg, progress=False)
    _overflow_once(cut)
    cut.fit(max_steps=3)
    ckpt = load_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")
    assert ckpt["scaler"]["scale"] == 32768.0
    resumed = Trainer(cfg, resume=True, progress=False)
    assert resumed.scaler.get_scale() == 32768.0
    resumed.fit()
    assert resumed.scaler.get_scale() == full.scaler.get_scale()
    history = [h["train_means"]["amp/skipped"] for h in full.history]
    assert history == [0.25, 0.0]  # one of epoch 0's four steps skipped
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _loader(trainer: Trainer):
    from metasparse.data.episodes import episode_loader

    t = trainer.cfg.train
    return episode_loader(
        trainer.train_set, t.way, t.shot, t.query, t.episodes_per_batch, 1, seed=t.seed
    )


def test_float16_nonfinite_loss_still_stops_the_run(tmp_path):
    trainer = Trainer(precision_config(tmp_path, "nan", "float16"), progress=False)
    forward = trainer.model.head.forward

    def nan_logits(*args, **kwargs):
        logits, stats = forward(*args, **kwargs)
        return logits * float("nan"), stats

    trainer.model.head.forward = nan_logits
    with pytest.raises(FloatingPointError, match=r"step 0: loss nan is not finite"):
        trainer.fit()


def test_float16_gradient_overflowing_below_the_least_scale_stops_the_run(tmp_path):
    trainer = Trainer(precision_config(tmp_path, "low", "float16"), progress=False)
    trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 0.5})
    _overflow_once(trainer)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    with pytest.raises(
        FloatingPointError,
        match=r"a gradient \(float16, even at loss scale 0\.5\) is not finite.*bfloat16",
    ):
        trainer.fit()
    for key, value in trainer.model.named_parameters():
        torch.testing.assert_close(value.detach(), before[key], rtol=0, atol=0, msg=key)


def test_bad_precision_values_are_rejected_with_the_choices(tmp_path):
    cfg = precision_config(tmp_path, "bad", "fp16")
    with pytest.raises(
        ValueError, match=r"'model.backbone_precision' must be one of float32, bfloat16, float16"
    ):
        Trainer(cfg, progress=False)
    with pytest.raises(ValueError, match="got 'half'; use bfloat16"):
        FewShotModel.from_config(ModelConfig(backbone_precision="half"), 1)


def test_float16_without_a_loss_scaler_names_bfloat16(monkeypatch):
    monkeypatch.delattr(torch.amp, "GradScaler")  # as in a torch without CPU loss scaling
    with pytest.raises(ValueError, match="float16 needs CUDA here; bfloat16 works on CPUs"):
        check_autocast("float16", CPU)
    check_autocast("bfloat16", CPU)


def test_compile_without_a_cxx_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-metasparse")
    cfg = tiny_config(tmp_path)
    cfg.model.compile = True
    with pytest.raises(ValueError, match=r"needs a C\+\+ compiler.*model\.compile=false"):
        Trainer(cfg, progress=False)


def test_compiled_backbone_keeps_the_plain_state_dict_keys():
    cfg = ModelConfig(backbone_options={"hidden": 8, "out_channels": 8})
    plain = FewShotModel.from_config(cfg, 1)
    compiled = FewShotModel.from_config(dataclasses.replace(cfg, compile=True), 1)
    assert list(compiled.state_dict()) == list(plain.state_dict())  # no "_orig_mod."
    # and weights saved through a torch.compile wrapper ("backbone._orig_mod.…") load too
    wrapper = torch.compile(compiled.backbone)
    state = {f"backbone.{k}": v for k, v in wrapper.state_dict().items()}
    assert all(k.startswith("backbone._orig_mod.") for k in state)
    state.update({k: v for k, v in compiled.state_dict().items() if k.startswith("head.")})
    load_model_state(plain, state, "a compiled model's state dict")
    for key, value in compiled.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value), key


@pytest.mark.slow
def test_compiled_run_checkpoint_tests_and_resumes_uncompiled(tmp_path):
    # minutes on a busy CPU: Inductor compiles the training and the eval graphs
    cfg = tiny_config(tmp_path, "compiled", batches_per_epoch=2, epochs=2)
    cfg.model.compile = True
    trainer = Trainer(cfg, progress=False)
    trainer.fit(max_steps=2)
    assert trainer.model.backbone._compiled_call_impl is not None
    ckpt = load_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")
    assert not any("_orig_mod." in k for k in ckpt["model"])
    model, _ = model_from_checkpoint(ckpt)  # tested uncompiled
    assert model.backbone._compiled_call_impl is None
    images = torch.rand(1, 5, 1, 28, 28)
    with torch.no_grad():
        expected = trainer.model.eval().embed(images, images)[0]
        torch.testing.assert_close(model.embed(images, images)[0], expected)
    # and resumed without compiling (model.compile may change on resume)
    plain = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, compile=False))
    resumed = Trainer(plain, resume=True, progress=False)
    assert resumed.model.backbone._compiled_call_impl is None
    assert resumed.fit()["global_step"] == 4


# ----------------------------------------------------------------- two processes (gloo)
def _distributed_scenarios(rank: int, tmp) -> dict:
    from test_distributed import small_config

    out = {}
    cfg = small_config(tmp, "ddp_bf16")
    cfg.model.backbone_precision = "bfloat16"
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    out["bf16"] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    # an overflow in rank 1's share only: both processes skip the step, and stay in step
    cfg = small_config(tmp, "ddp_fp16")
    cfg.model.backbone_precision = "float16"
    trainer = Trainer(cfg, progress=False)
    if rank == 1:
        _overflow_once(trainer)
    trainer.fit()
    out["fp16"] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    out["fp16_scale"] = trainer.scaler.get_scale()
    out["fp16_skipped"] = trainer.history[0]["train_means"]["amp/skipped"]
    return out


@pytest.mark.slow  # ~35 s on the loaded 2-core machine: two processes start
def test_two_processes_train_in_bfloat16_and_skip_float16_overflows_together(tmp_path):
    import torch.multiprocessing as mp
    from test_distributed import run_scenarios, small_config

    args = (2, str(tmp_path / "rdv"), str(tmp_path), _distributed_scenarios)
    mp.spawn(run_scenarios, args=args, nprocs=2)
    ranks = [torch.load(tmp_path / f"result_rank{r}.pt") for r in range(2)]
    for key in ranks[0]["fp16"]:  # every process holds the same weights
        assert torch.equal(ranks[0]["fp16"][key], ranks[1]["fp16"][key]), key
    assert ranks[0]["fp16_scale"] == ranks[1]["fp16_scale"] == 32768.0
    assert ranks[0]["fp16_skipped"] == ranks[1]["fp16_skipped"] == pytest.approx(1 / 3)
    # one process with the processes' BatchNorm groups trains as the two do, to bfloat16 rounding
    cfg = small_config(tmp_path, "one_bf16", bn_group_episodes=2)
    cfg.model.backbone_precision = "bfloat16"
    alone = Trainer(cfg, progress=False)
    alone.fit()
    for key, value in alone.model.state_dict().items():
        torch.testing.assert_close(ranks[0]["bf16"][key], value, rtol=2e-2, atol=2e-3, msg=key)
