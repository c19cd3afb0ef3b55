"""ResNet-12 as in MetaOptNet (Lee et al. 2019): 4 residual blocks, DropBlock in the last two."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from metasparse.backbones.dropblock import DropBlock


def _conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """Three conv3×3+BN (LeakyReLU 0.1 between), 1×1 conv+BN shortcut, add, LeakyReLU, pool 2.

    After pooling, either DropBlock (``dropblock`` given) or plain dropout at ``dropout`` is
    applied in training mode, as in MetaOptNet's ``BasicBlock``.
    """

    def __init__(
        self, c_in: int, c_out: int, dropout: float = 0.0, dropblock: DropBlock | None = None
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(c_in, c_out), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = _conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.conv3, self.bn3 = _conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel_size=1, bias=False), nn.BatchNorm2d(c_out)
        )
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.dropout = float(dropout)
        self.dropblock = dropblock

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.pool(self.act(out + self.shortcut(x)))
        if self.dropblock is not None:
            return self.dropblock(out)
        if self.dropout > 0.0:
            return F.dropout(out, p=self.dropout, training=self.training)
        return out


class ResNet12(nn.Module):
    """MetaOptNet's ResNet-12: images (B, C, H, W) → flat features (B, d).

    Blocks of widths 64-160-320-640 each halve the resolution (84 → 5×5 maps, d = 16000
    without pooling; 32 → 2×2, d = 2560; 28 → 1×1, d = 640). The first blocks use plain
    dropout, the last two DropBlock with a drop rate ramped linearly over
    ``dropblock_ramp_steps`` training forward calls. MetaOptNet ramps over 40000 calls of
    its per-block counter, which counts support and query passes separately (two per batch)
    and also eval passes; our model embeds support and query in one call, so 20000 calls
    reach the full rate at epoch 20 of 1000 batches, MetaOptNet's nominal schedule.

    Args:
        in_channels: image channels.
        widths: output channels of the residual blocks (at least two blocks).
        drop_rate: DropBlock's final drop rate in the last two blocks (0 disables it).
        dropblock_size: DropBlock's square side (MetaOptNet: 5 for 84×84, 2 for 32×32 data).
        avg_pool: global average pooling before flattening (d = widths[-1]); MetaOptNet's
            ``AvgPool2d(5)`` equals it on 84×84 inputs.
        dropout: plain dropout rate of the other blocks; ``None`` uses ``drop_rate`` as
            MetaOptNet does.
        dropblock_ramp_steps: training forward calls to ramp DropBlock's rate (0: constant).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 160, 320, 640),
        drop_rate: float = 0.1,
        dropblock_size: int = 5,
        avg_pool: bool = False,
        dropout: float | None = None,
        dropblock_ramp_steps: int = 20000,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) < 2 or any(int(w) != w or w < 1 for w in widths):
            raise ValueError(f"widths must be >= 2 positive integers, got {widths!r}")
        if int(in_channels) != in_channels or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must lie in [0, 1), got {drop_rate!r}")
        dropout = drop_rate if dropout is None else dropout
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.in_channels = int(in_channels)
        self.widths = tuple(int(w) for w in widths)
        self.avg_pool = bool(avg_pool)
        blocks = []
        c_in = self.in_channels
        for i, c_out in enumerate(self.widths):
            dropblock = None
            if i >= len(self.widths) - 2 and drop_rate > 0.0:
                dropblock = DropBlock(dropblock_size, drop_rate, dropblock_ramp_steps)
            blocks.append(ResidualBlock(c_in, c_out, dropout=dropout, dropblock=dropblock))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _min_size(self) -> int:
        return 2 ** len(self.widths)

    def feature_dim(self, image_size: int, in_channels: int) -> int:
        """Length of the flat feature vector for square ``image_size`` inputs."""
        if in_channels != self.in_channels:
            raise ValueError(
                f"this ResNet12 was built for in_channels={self.in_channels}, asked about "
                f"{in_channels}; build it with in_channels={in_channels}"
            )
        side = int(image_size)
        for _ in self.widths:
            side //= 2
        if side < 1:
            raise ValueError(
                f"ResNet12 with {len(self.widths)} blocks needs images of at least "
                f"{self._min_size()}×{self._min_size()} pixels, got {image_size}"
            )
        return self.widths[-1] * (1 if self.avg_pool else side * side)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet12 expects images (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < self._min_size():
            raise ValueError(
                f"ResNet12 needs images of at least {self._min_size()}×{self._min_size()} "
                f"pixels, got {tuple(x.shape)}"
            )
        out = self.blocks(x)
        if self.avg_pool:
            out = out.mean(dim=(2, 3))
        return out.flatten(1)
