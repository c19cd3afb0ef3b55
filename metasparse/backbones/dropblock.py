"""DropBlock (Ghiasi et al., NeurIPS 2018) with MetaOptNet's linearly ramped drop rate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DropBlock(nn.Module):
    """Zero out square blocks of a feature map during training; identity in eval mode.

    Seeds are drawn with probability ``gamma`` on the positions where a whole ``block_size``
    square fits, each seed removes the square below-right of it, and the kept activations are
    rescaled by ``numel / kept`` so the expected sum is unchanged (as in MetaOptNet's
    ``models/dropblock.py``). ``gamma = rate / bs² · HW / ((H−bs+1)(W−bs+1))``.

    The drop rate grows linearly from 0 to ``drop_rate`` over the first ``ramp_steps``
    training-mode forward calls (``ramp_steps=0``: constant rate). The call counter is a buffer,
    so it is saved in checkpoints and a resumed run continues the same schedule.

    Args:
        block_size: side of the dropped squares; clamped to the feature map's size (a 32×32
            input reaches 4×4 and 2×2 maps in ResNet-12's last blocks).
        drop_rate: final fraction of activations to drop, in [0, 1).
        ramp_steps: number of training forward calls over which the rate is ramped up.
    """

    def __init__(self, block_size: int = 5, drop_rate: float = 0.1, ramp_steps: int = 0) -> None:
        super().__init__()
        if int(block_size) != block_size or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must lie in [0, 1), got {drop_rate!r}")
        if int(ramp_steps) != ramp_steps or ramp_steps < 0:
            raise ValueError(f"ramp_steps must be a non-negative integer, got {ramp_steps!r}")
        self.block_size = int(block_size)
        self.drop_rate = float(drop_rate)
        self.ramp_steps = int(ramp_steps)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def current_rate(self) -> float:
        """The drop rate the next training call uses (after the counter is advanced)."""
        if self.ramp_steps == 0:
            return self.drop_rate
        return self.drop_rate * min(1.0, (int(self.steps) + 1) / self.ramp_steps)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"DropBlock expects (B, C, H, W) feature maps, got {tuple(x.shape)}")
        if not self.training or self.drop_rate == 0.0:
            return x
        rate = self.current_rate()
        self.steps += 1
        height, width = x.shape[-2:]
        bs = min(self.block_size, height, width)
        valid = (height - bs + 1) * (width - bs + 1)
        gamma = min(1.0, rate / bs**2 * (height * width) / valid)
        seeds = torch.bernoulli(
            torch.full(
                (*x.shape[:2], height - bs + 1, width - bs + 1),
                gamma,
                dtype=x.dtype,
                device=x.device,
            )
        )
        # A seed at (i, j) covers rows i..i+bs-1 and columns j..j+bs-1 of the map.
        dropped = F.max_pool2d(F.pad(seeds, (bs - 1, bs - 1, bs - 1, bs - 1)), bs, stride=1)
        keep = 1.0 - dropped
        kept = keep.sum().clamp_min(1.0)
        return x * keep * (keep.numel() / kept)

    def extra_repr(self) -> str:
        return (
            f"block_size={self.block_size}, drop_rate={self.drop_rate}, "
            f"ramp_steps={self.ramp_steps}"
        )
