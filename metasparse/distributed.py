"""Distributed data-parallel training: the process group torchrun sets up, and what training needs.

``torchrun --nproc_per_node=N -m metasparse train …`` starts N processes and gives each
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`process_group` turns those into a
``torch.distributed`` group (gloo on CPUs, NCCL on GPUs). A process started without them, or with
``WORLD_SIZE=1``, trains alone exactly as before. Each process embeds an equal, contiguous share of
every batch's episodes; gradients are averaged by DistributedDataParallel (the backbone) and by
:func:`mean_over_ranks_` (the head's few parameters, the loss, accuracy and head statistics).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from metasparse.model import BATCH_NORMS, Embedder, FewShotModel, resolve_device


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job: its rank among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the process's index on its own machine: which GPU it takes

    @property
    def enabled(self) -> bool:
        """Whether several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and progress."""
        return self.rank == 0


SINGLE = Context()


def _env_int(name: str, default: int | None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ValueError(
                f"WORLD_SIZE is set but {name} is not; start distributed training with torchrun "
                "(e.g. torchrun --standalone --nproc_per_node=2 -m metasparse train …), which "
                "sets WORLD_SIZE, RANK and LOCAL_RANK for every process"
            )
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"environment variable {name}={raw!r} must be a non-negative integer; it is set by "
            "torchrun: unset it to train in one process"
        )
    return value


def from_environment() -> Context:
    """The job torchrun describes in ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (alone if unset)."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE
    rank = _env_int("RANK", None)
    local = _env_int("LOCAL_RANK", None)
    if rank >= world:
        raise ValueError(f"RANK={rank} must be below WORLD_SIZE={world}; check the launcher")
    return Context(rank, world, local)


def current() -> Context:
    """This process's place in the initialised ``torch.distributed`` group (alone if none)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return SINGLE
    rank = dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", rank))  # processes spawned on one machine: = rank
    return Context(rank, dist.get_world_size(), local)


@contextmanager
def process_group(device: str = "auto") -> Iterator[Context]:
    """Join the process group torchrun describes (gloo for a CPU ``device``, NCCL for CUDA) and
    leave it on exit; a single process, or one already in a group, is left as it is."""
    ctx = from_environment()
    if not ctx.enabled or dist.is_initialized():
        yield current()
        return
    if resolve_device(device).type == "cuda":
        _check_gpu(ctx)
        torch.cuda.set_device(ctx.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)  # env://: MASTER_ADDR, MASTER_PORT from torchrun
    try:
        yield ctx
    finally:
        dist.destroy_process_group()


def _check_gpu(ctx: Context) -> None:
    if ctx.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"process with LOCAL_RANK={ctx.local_rank} needs GPU cuda:{ctx.local_rank} but this "
            f"machine has {torch.cuda.device_count()}; start at most that many processes per node "
            "(torchrun --nproc_per_node)"
        )


def training_device(name: str, ctx: Context) -> torch.device:
    """The device of ``train.device`` for this process: under several processes, CUDA means the
    GPU of this process's ``LOCAL_RANK``, so each process has its own."""
    device = resolve_device(name)
    if not ctx.enabled or device.type != "cuda":
        return device
    if name not in ("auto", "cuda"):
        raise ValueError(
            f"train.device={name!r} would put all {ctx.world_size} processes on one GPU; use "
            "train.device=cuda (or auto): each process then takes cuda:LOCAL_RANK"
        )
    _check_gpu(ctx)
    return torch.device("cuda", ctx.local_rank)


def shard_episodes(episodes_per_batch: int, world_size: int) -> int:
    """The episodes of each batch one process embeds: an equal share, or a ValueError."""
    if episodes_per_batch % world_size:
        multiple = world_size * max(1, -(-episodes_per_batch // world_size))
        raise ValueError(
            f"train.episodes_per_batch={episodes_per_batch} cannot be split evenly across "
            f"{world_size} processes (WORLD_SIZE={world_size}): each process embeds an equal "
            f"share of every batch; use a multiple of {world_size} (e.g. "
            f"train.episodes_per_batch={multiple}) or start a number of processes that divides "
            f"{episodes_per_batch}"
        )
    return episodes_per_batch // world_size


def bn_group_episodes(episodes_per_batch: int, bn_group: int, world_size: int) -> int:
    """The BatchNorm group (episodes normalised together) each process embeds with; 0 = all its
    episodes. Under several processes a group never spans two of them, so it divides the share."""
    if world_size <= 1:
        return bn_group
    shard = shard_episodes(episodes_per_batch, world_size)
    if bn_group and shard % bn_group:
        raise ValueError(
            f"train.bn_group_episodes={bn_group} does not divide the {shard} episodes each of the "
            f"{world_size} processes embeds (train.episodes_per_batch={episodes_per_batch} / "
            f"{world_size}); use a divisor of {shard}, or 0 for one group per process"
        )
    return bn_group


def step_seed(seed: int, epoch: int, step_in_epoch: int, rank: int) -> int:
    """The torch seed of one process's training step (dropout, DropBlock): independent across
    processes and a pure function of the position, so a resumed run replays it whatever N is."""
    mask = (1 << 64) - 1
    parts = [seed & mask, epoch & mask, step_in_epoch & mask, rank & mask, 0x5354_4550]
    return int(np.random.SeedSequence(parts).generate_state(1, dtype=np.uint64)[0]) >> 1


def mean_over_ranks_(flat: torch.Tensor) -> torch.Tensor:
    """Replace ``flat`` by its mean over the processes, in place (one all-reduce), and return it."""
    dist.all_reduce(flat)
    return flat.div_(dist.get_world_size())


def mean_values(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over the processes of each value (the same keys on every process)."""
    keys = sorted(values)
    flat = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    reduced = mean_over_ranks_(flat).tolist()
    return dict(zip(keys, reduced, strict=True))


def average_step_(model: FewShotModel, metrics: dict[str, float]) -> dict[str, float]:
    """After a step's backward pass, in one all-reduce: average the head's gradients over the
    processes (DDP averages the backbone's), and the BatchNorm running statistics (each process
    updated them from its own share), and return the mean of each metric."""
    head = [p for p in model.head.parameters() if p.requires_grad]
    stats = [
        b
        for m in model.modules()
        if isinstance(m, BATCH_NORMS) and m.running_mean is not None
        for b in (m.running_mean, m.running_var)
    ]
    device = next(model.parameters()).device
    keys = sorted(metrics)
    flat = torch.cat(
        [
            *((torch.zeros_like(p) if p.grad is None else p.grad).double().flatten() for p in head),
            *(b.double().flatten() for b in stats),
            torch.tensor(
                [float(p.grad is not None) for p in head] + [metrics[k] for k in keys],
                dtype=torch.float64,
                device=device,
            ),
        ]
    )
    mean_over_ranks_(flat)
    offset = 0
    with torch.no_grad():
        for t in [*(p for p in head), *stats]:
            t_new = flat[offset : offset + t.numel()].view_as(t)
            offset += t.numel()
            if isinstance(t, torch.nn.Parameter):
                t.grad = t_new.to(t.dtype)  # dropped again below if no process had one
            else:
                t.copy_(t_new)
        for p, had in zip(head, flat[offset : offset + len(head)].tolist(), strict=True):
            if not had:
                p.grad = None
    means = flat[offset + len(head) :].tolist()
    return dict(zip(keys, means, strict=True))


def wrap_backbone(model: FewShotModel, device: torch.device) -> DistributedDataParallel:
    """``model``'s backbone in DistributedDataParallel (its gradients averaged as they are
    computed), after copying rank 0's weights into every process's model."""
    broadcast_module_(model.head)
    # the BatchNorm statistics are averaged by average_step_, not copied from rank 0 at every
    # forward pass (the option's name since torch 2.14; broadcast_buffers before)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return DistributedDataParallel(
        Embedder(model.backbone, model.channels_last, model.precision),
        device_ids=[device.index] if device.type == "cuda" else None,
        **{no_sync: False},
    )


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_module_(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every process."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def barrier() -> None:
    """Wait for every process (e.g. until rank 0's checkpoint is on disk)."""
    dist.barrier()


__all__ = [
    "SINGLE",
    "Context",
    "average_step_",
    "barrier",
    "bn_group_episodes",
    "broadcast_module_",
    "current",
    "from_environment",
    "gather",
    "mean_over_ranks_",
    "mean_values",
    "process_group",
    "shard_episodes",
    "step_seed",
    "training_device",
    "wrap_backbone",
]
