"""Meta-training: episodes → backbone → head → query loss, with exact resume and logging.

The meta-gradient is computed in :meth:`Trainer.step`: the query loss is back-propagated through
the head (implicitly differentiated where the head is an optimization problem) into the support
and query features, then through the backbone. The two halves are timed separately.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from metasparse import distributed as dist
from metasparse.checkpoint import (
    PREVIOUS,
    check_resumable,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from metasparse.config import Config, check_training, save_config
from metasparse.data import FewShotDataset, build_dataset
from metasparse.evaluation import evaluate
from metasparse.model import FewShotModel
from metasparse.optim import OPTIMIZERS, lr_factor, make_optimizer
from metasparse.precision import check_backbone_options, make_scaler, optimizer_step, scaler_skips
from metasparse.utils import all_finite, atomic_torch_save, atomic_write_json, seed_everything


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """Owns the model, optimizer, data and output folder of one meta-training run.

    In a ``torch.distributed`` group (``torchrun``) each process trains on its share of every
    batch (:mod:`metasparse.distributed`); only rank 0 writes files and shows progress.
    """

    def __init__(self, cfg: Config, resume: bool | str = False, progress: bool = True) -> None:
        """``resume``: ``True`` or ``"last"`` continues from ``checkpoints/last.pt``,
        ``"previous"`` from the one before it (``previous.pt``, when last.pt is damaged)."""
        self.cfg = cfg
        self.dist = dist.current()
        self.progress = progress and self.dist.is_main
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = dist.training_device(cfg.train.device, self.dist)
        t = cfg.train
        check_training(cfg)
        # BatchNorm groups of episodes in this process's share of a batch (0: all of it)
        self.bn_group = dist.bn_group_episodes(
            t.episodes_per_batch, t.bn_group_episodes, self.dist.world_size
        )
        if t.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown train.optimizer {t.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )

        check_backbone_options(cfg.model, self.device)  # precision and compile on this device
        seed_everything(t.seed)
        data = cfg.data
        self.train_set = self._dataset(data.train_split, augment=data.augment)
        self.val_set = self._dataset(data.val_split, augment=False)
        in_channels = int(self.train_set[0][0].shape[0])
        self.in_channels = in_channels
        self.model = FewShotModel.from_config(cfg.model, in_channels).to(self.device)
        self.optimizer = make_optimizer(self.model, t)
        self.scaler = make_scaler(cfg.model.backbone_precision, self.device)  # float16 only
        self.epoch = 0  # epoch in progress
        self.step_in_epoch = 0  # batches of that epoch already done
        self.global_step = 0
        self.best_val = -1.0
        self.best_epoch = -1
        self.elapsed = 0.0  # seconds of training steps and validation, summed over resumes
        self.history: list[dict[str, Any]] = []
        last = self.ckpt_dir / "last.pt"
        if resume not in (False, True, "last", "previous"):
            raise ValueError(f"resume must be 'last' or 'previous', got {resume!r}")
        if resume:
            source = self.ckpt_dir / (PREVIOUS if resume == "previous" else "last.pt")
            if not source.is_file():
                hint = (
                    f"; {self.ckpt_dir / PREVIOUS} exists: pass --resume previous"
                    if resume != "previous" and (self.ckpt_dir / PREVIOUS).is_file()
                    else "; start the run without --resume"
                )
                raise FileNotFoundError(f"--resume given but {source} does not exist{hint}")
            if self.dist.is_main:
                for stale in self.ckpt_dir.glob(".*.pt.*.tmp"):  # half-written by a killed run
                    stale.unlink(missing_ok=True)
            self._restore(load_checkpoint(source, map_location=self.device))
        elif last.is_file():
            raise ValueError(
                f"{self.run_dir} already holds a run (checkpoints/last.pt); pass --resume to "
                "continue it, or choose another name/output_dir"
            )
        self._ddp: DistributedDataParallel | None = None
        if self.dist.enabled:
            self._ddp = dist.wrap_backbone(self.model, self.device)

    def _dataset(self, split: str, augment: bool) -> FewShotDataset:
        d = self.cfg.data
        return build_dataset(d.name, split, root=d.root, augment=augment, **d.options)

    # ----------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        scaler = {} if self.scaler is None else {"scaler": self.scaler.state_dict()}
        return {
            "config": self.cfg.to_dict(),
            "in_channels": self.in_channels,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **scaler,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "elapsed_seconds": self.elapsed,
            "rng": rng,
        }

    def _restore(self, ckpt: dict[str, Any]) -> None:
        check_resumable(ckpt, self.cfg)
        load_model_state(self.model, ckpt["model"], "checkpoints/last.pt")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ValueError(
                f"the optimizer state in checkpoints/last.pt does not fit train.optimizer "
                f"{self.cfg.train.optimizer!r} and the model's parameters ({exc})"
            ) from exc
        if self.scaler is not None and "scaler" in ckpt:  # float16 runs: the loss scale
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step_in_epoch = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        self.global_step = int(ckpt["global_step"])
        self.best_val, self.best_epoch = float(ckpt["best_val"]), int(ckpt["best_epoch"])
        self.history = list(ckpt["history"])
        self.elapsed = float(ckpt.get("elapsed_seconds", 0.0))  # absent before 2026-12
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng"]["cuda"]])

    def save(self, name: str) -> None:
        """Atomically write ``checkpoints/<name>.pt`` (in a distributed run: rank 0 only)."""
        if not self.dist.is_main:
            return
        save_checkpoint(self._state(), self.ckpt_dir / f"{name}.pt", keep_previous=name == "last")

    # ----------------------------------------------------------------- one step
    def step(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, float]]:
        """One meta-gradient step on a batch of episodes; returns (metrics, seconds per phase)."""
        way, dev, times = self.cfg.train.way, self.device, {}
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.dist.enabled:  # each process its own dropout, a function of the position
            rank, seed = self.dist.rank, self.cfg.train.seed
            torch.manual_seed(dist.step_seed(seed, self.epoch, self.step_in_epoch, rank))

        t0 = time.perf_counter()
        embed = self.model.embed if self._ddp is None else self._ddp
        f_s, f_q = embed(batch["support"], batch["query"], self.bn_group)
        _sync(dev)
        t1 = time.perf_counter()
        # Cut the graph at the features so head and backbone backward passes are timed apart.
        h_s = f_s.detach().requires_grad_(True)
        h_q = f_q.detach().requires_grad_(True)
        logits, stats = self.model.head(h_q, h_s, batch["support_labels"], way)
        loss = F.cross_entropy(
            logits.reshape(-1, way),
            batch["query_labels"].reshape(-1),
            label_smoothing=self.cfg.train.label_smoothing,
        )
        # meta-gradient through the head → features (and head parameters); float16 scales it
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        _sync(dev)
        t2 = time.perf_counter()
        torch.autograd.backward([f_s, f_q], [h_s.grad, h_q.grad])  # … → backbone parameters
        if self.dist.enabled:  # the means over the processes: the global batch's values
            metrics = dist.average_step_(self.model, self._metrics(logits, loss, stats, batch))
            loss = torch.tensor(metrics["loss"], device=dev)
        # checked before the step, so the weights stay good (float16: the scaler may skip it)
        amp = optimizer_step(
            self.optimizer, self.scaler, lambda: self._check_finite(loss, batch, stats)
        )
        _sync(dev)
        t3 = time.perf_counter()
        times = {"head": t2 - t1, "backbone": (t1 - t0) + (t3 - t2)}
        if not self.dist.enabled:
            metrics = self._metrics(logits, loss, stats, batch)
        return {**metrics, **amp}, times

    @staticmethod
    def _metrics(
        logits: torch.Tensor, loss: torch.Tensor, stats: dict[str, Any], batch: dict[str, Any]
    ) -> dict[str, float]:
        acc = (logits.argmax(-1) == batch["query_labels"]).float().mean().item() * 100.0
        return {"loss": loss.item(), "accuracy": acc, **{k: float(v) for k, v in stats.items()}}

    def _check_finite(
        self, loss: torch.Tensor, batch: dict[str, torch.Tensor], stats: dict[str, Any]
    ) -> bool:
        """Stop before a non-finite loss or gradient reaches the weights; save the batch, the
        head's statistics and the names of the bad gradients for debugging. Returns whether
        float16's loss scaler skips the step instead (overflowed gradients, finite loss)."""
        grads = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        # one reduction and one host sync per step; only a non-finite (or overflowed) sum
        # looks parameter by parameter
        sums = torch.stack([loss.detach().float(), *(g.float().sum() for _, g in grads)])
        if all_finite(sums):
            return False
        bad = [n for n, g in grads if not bool(torch.isfinite(g).all())]
        if bool(torch.isfinite(loss)) and not bad:
            return False
        if scaler_skips(self.scaler, loss):
            return True
        # every process saves its own share of the batch (the loss is the global batch's)
        rank = f"_rank{self.dist.rank}" if self.dist.enabled else ""
        dump = self.run_dir / f"nonfinite_step{self.global_step}{rank}.pt"
        atomic_torch_save(  # a plain torch file: torch.load(path, weights_only=True) reads it
            {
                "batch": {k: v.detach().cpu() for k, v in batch.items()},
                "loss": loss.detach().cpu(),
                "head_stats": {k: float(v) for k, v in stats.items()},
                "nonfinite_grads": bad,
                "global_step": self.global_step,
            },
            dump,
        )
        what = f"loss {loss.item()}" if not bool(torch.isfinite(loss)) else "a gradient"
        if self.scaler is not None and what == "a gradient":
            what += f" (float16, even at loss scale {self.scaler.get_scale():g})"
        raise FloatingPointError(
            f"training stopped at step {self.global_step}: {what} is not finite "
            f"({len(bad)} parameter(s) with non-finite gradients, e.g. {bad[:3]}); the weights "
            f"were not updated. Batch and head statistics saved to {dump}. Lower train.lr, "
            "check the head's options"
            + (", use model.backbone_precision=bfloat16" if self.scaler is not None else "")
            + ", or resume from checkpoints/last.pt"
        )

    # ----------------------------------------------------------------- the loop
    def validate(self) -> dict[str, Any]:
        """Accuracy ± CI on the fixed validation episodes."""
        v = self.cfg.val
        return evaluate(
            self.model,
            self.val_set,
            v.way,
            v.shot,
            v.query,
            v.episodes,
            seed=v.seed,
            episodes_per_batch=v.episodes_per_batch,
            device=self.device,
            num_workers=self.cfg.data.num_workers,
            distributed=self.dist.enabled,
        )

    def fit(self, max_steps: int | None = None) -> dict[str, Any]:
        """Train until ``train.epochs`` (or ``max_steps`` more steps, to simulate a stop)."""
        from metasparse.data.episodes import episode_loader

        cfg, t = self.cfg, self.cfg.train
        writer = None  # rank 0 writes config, logs and checkpoints
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.global_step)
        total = t.epochs * t.batches_per_epoch
        bar = tqdm(
            total=total,
            initial=self.global_step,
            disable=not self.progress,
            unit="step",
            dynamic_ncols=True,
            desc=cfg.name,
            mininterval=1.0,
        )
        steps_done = 0
        last_save = time.monotonic()
        window: dict[str, list[float]] = defaultdict(list)
        self._epoch_sums: dict[str, float] = defaultdict(float)
        self._epoch_count = 0
        try:
            while self.epoch < t.epochs:
                lr = t.lr * lr_factor(t.lr_schedule, self.epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loader = episode_loader(
                    self.train_set,
                    t.way,
                    t.shot,
                    t.query,
                    t.episodes_per_batch,
                    t.batches_per_epoch,
                    seed=t.seed,
                    epoch=self.epoch,
                    num_workers=cfg.data.num_workers,
                    start_batch=self.step_in_epoch,
                    pin_memory=self.device.type == "cuda",
                    rank=self.dist.rank,
                    world_size=self.dist.world_size,
                )
                t_data = time.perf_counter()
                for batch in loader:
                    data_time = time.perf_counter() - t_data
                    metrics, times = self.step(batch)
                    self.step_in_epoch += 1
                    self.global_step += 1
                    steps_done += 1
                    record = {**metrics, **{f"time/{k}": v for k, v in times.items()}}
                    record["time/data"] = data_time
                    self.elapsed += data_time + sum(times.values())
                    for key, value in record.items():
                        window[key].append(value)
                        self._epoch_sums[key] += value
                    self._epoch_count += 1
                    if self.global_step % t.log_every == 0:
                        self._log(writer, window, lr)
                        bar.set_postfix(
                            loss=f"{metrics['loss']:.3f}",
                            acc=f"{metrics['accuracy']:.1f}",
                            refresh=False,
                        )
                    bar.update(1)
                    due = t.checkpoint_every and self.global_step % t.checkpoint_every == 0
                    timed = t.checkpoint_minutes and (
                        time.monotonic() - last_save >= 60.0 * t.checkpoint_minutes
                    )
                    if due or timed:
                        self.save("last")
                        last_save = time.monotonic()
                    if max_steps is not None and steps_done >= max_steps:
                        self.save("last")
                        return self._finish(stopped=True)
                    t_data = time.perf_counter()
                self._end_epoch(writer, lr)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return self._finish(stopped=False)

    def _finish(self, stopped: bool) -> dict[str, Any]:
        if self.dist.enabled:  # no process returns before rank 0's checkpoint is on disk
            dist.barrier()
        return self.summary(stopped=stopped)

    def _mean_times(self, values: dict[str, float]) -> dict[str, float]:
        """The ``time/…`` values averaged over the processes (the metrics already are)."""
        if not self.dist.enabled:
            return values
        times = {k: v for k, v in values.items() if k.startswith("time/")}
        return {**values, **dist.mean_values(times, self.device)}

    def _log(self, writer: SummaryWriter | None, window: dict[str, list[float]], lr: float) -> None:
        means = self._mean_times({key: sum(vs) / len(vs) for key, vs in window.items()})
        window.clear()
        if writer is None:
            return
        for key, value in means.items():
            tag = (
                key
                if key.startswith(("time/", "amp/"))
                else (f"train/{key}" if key in ("loss", "accuracy") else f"head/{key}")
            )
            writer.add_scalar(tag, value, self.global_step)
        writer.add_scalar("train/lr", lr, self.global_step)

    def _end_epoch(self, writer: SummaryWriter | None, lr: float) -> None:
        start = time.perf_counter()
        val = self.validate()
        self.elapsed += time.perf_counter() - start
        if writer is not None:
            writer.add_scalar("val/accuracy", val["accuracy"], self.global_step)
            writer.add_scalar("val/ci95", val["ci95"], self.global_step)
            for key, value in val["head_stats"].items():
                writer.add_scalar(f"val_head/{key}", value, self.global_step)
        n = max(self._epoch_count, 1)  # means over the steps this process ran in the epoch
        train_means = self._mean_times({k: v / n for k, v in self._epoch_sums.items()})
        self._epoch_sums.clear()
        self._epoch_count = 0
        record = {
            "train_means": train_means,
            "epoch": self.epoch,
            "step": self.global_step,
            "lr": lr,
            "val_accuracy": val["accuracy"],
            "val_ci95": val["ci95"],
            "val_head_stats": val["head_stats"],
            "elapsed_seconds": self.elapsed,
        }
        self.history.append(record)
        improved = val["accuracy"] > self.best_val
        if improved:
            self.best_val, self.best_epoch = val["accuracy"], self.epoch
        if self.progress:
            tqdm.write(
                f"epoch {self.epoch + 1}/{self.cfg.train.epochs}: val {val['accuracy']:.2f} ± "
                f"{val['ci95']:.2f}%" + (" (best)" if improved else "")
            )
        self.epoch += 1
        self.step_in_epoch = 0
        if improved:
            self.save("best")
        self.save("last")
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "history.json", self.history)

    def summary(self, stopped: bool) -> dict[str, Any]:
        """What the run has reached so far (also what ``metasparse train`` prints)."""
        return {
            "run_dir": str(self.run_dir),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_val_accuracy": self.best_val,
            "best_epoch": self.best_epoch,
            "stopped_early": stopped,
            "history": self.history,
        }


def train(
    cfg: Config,
    resume: bool | str = False,
    progress: bool = True,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Meta-train according to ``cfg``; returns the run summary."""
    return Trainer(cfg, resume=resume, progress=progress).fit(max_steps=max_steps)
