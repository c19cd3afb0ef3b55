"""The meta-optimizer and its learning-rate schedule, as the config names them."""

from __future__ import annotations

import torch

from metasparse.config import TrainConfig

OPTIMIZERS = ("sgd", "adam")


def lr_factor(schedule: list[list[float]], epoch: int) -> float:
    """Multiplier of the base learning rate at (0-based) ``epoch`` for a step schedule."""
    factor = 1.0
    for start, value in sorted(schedule, key=lambda item: item[0]):
        if epoch >= start:
            factor = float(value)
    return factor


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """The meta-optimizer named by ``train.optimizer`` (SGD for MetaOptNet, Adam for ProtoNets);
    with ``scale_weight_decay`` off, the head's logit scale sits in a group without decay."""
    params: list = list(model.parameters())
    if not t.scale_weight_decay:
        scale = {id(p) for n, p in model.named_parameters() if n.startswith("head.scale")}
        params = [
            {"params": [p for p in params if id(p) not in scale]},
            {"params": [p for p in params if id(p) in scale], "weight_decay": 0.0},
        ]
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay
        )
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    raise ValueError(
        f"unknown train.optimizer {t.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
    )
