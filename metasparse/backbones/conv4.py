"""Conv-4: the light backbone of ProtoNet/MetaOptNet (4 × [conv3×3, BN, ReLU, max-pool 2])."""

from __future__ import annotations

import math
from itertools import pairwise

from torch import Tensor, nn


def _check_positive_int(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Conv4(nn.Module):
    """Four conv blocks (Snell et al. 2017; MetaOptNet's ``ProtoNetEmbedding``), flat features.

    Each block is conv 3×3 (padding 1) → BatchNorm → ReLU → max-pool 2×2, so an ``S×S`` image
    yields ``out_channels · (S // 16)²`` features (84 → 1600, 32 → 256, 28 → 64).
    Convolutions are initialised with N(0, 2 / (9 · out_channels)) as in MetaOptNet.

    Args:
        in_channels: image channels (3 for RGB, 1 for Omniglot).
        hidden: channels of the first three blocks.
        out_channels: channels of the last block.
    """

    def __init__(self, in_channels: int = 3, hidden: int = 64, out_channels: int = 64) -> None:
        super().__init__()
        self.in_channels = _check_positive_int("in_channels", in_channels)
        hidden = _check_positive_int("hidden", hidden)
        self.out_channels = _check_positive_int("out_channels", out_channels)
        widths = [self.in_channels, hidden, hidden, hidden, self.out_channels]
        blocks = []
        for c_in, c_out in pairwise(widths):
            blocks += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.encoder = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0.0, math.sqrt(2.0 / (9 * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_dim(self, image_size: int, in_channels: int) -> int:
        """Length of the flat feature vector for square ``image_size`` inputs."""
        if in_channels != self.in_channels:
            raise ValueError(
                f"this Conv4 was built for in_channels={self.in_channels}, asked about "
                f"{in_channels}; build it with in_channels={in_channels}"
            )
        side = int(image_size)
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"Conv4 needs images of at least 16×16 pixels, got {image_size}")
        return self.out_channels * side * side

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv4 expects images (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"Conv4 needs images of at least 16×16 pixels, got {tuple(x.shape)}")
        return self.encoder(x).flatten(1)
