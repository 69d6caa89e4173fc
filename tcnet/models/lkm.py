"""The CNN branch: stem, large-kernel module (LKM) blocks and stages.

LKM block (paper: "two BN-Conv sequences, two 1×1 dense convolutional layers and one 31×31
depthwise layer"; the 1×1 output and the depthwise output joined by channel concatenation)::

    a = Conv1×1(BN(x))             # BN-Conv sequence 1
    b = DW31×31(a)                 # the very large depthwise kernel
    c = Conv1×1(BN(concat[a, b]))  # BN-Conv sequence 2, 2C -> C
    y = x + Conv1×1(GELU(c))       # last 1×1 dense layer, residual
"""

from __future__ import annotations

import torch
from torch import nn

from tcnet.models.layers import ConvBN, maybe_ham
from tcnet.models.lk_conv import LargeKernelDWConv


class Stem(nn.Sequential):
    """Conv3×3 s2 → BN → GELU → Conv3×3 s2 → BN: ``B×in×H×W -> B×C×H/4×W/4``."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__(
            ConvBN(in_channels, channels, 3, stride=2),
            nn.GELU(),
            ConvBN(channels, channels, 3, stride=2),
        )


class LKMBlock(nn.Module):
    """One large-kernel block, ``B×C×H×W -> B×C×H×W``; ``ham`` appends a HAM (all_conv placement)."""

    def __init__(self, dim: int, lk_size: int = 31, lk_impl: str = "auto", ham: bool = False):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.pw1 = nn.Conv2d(dim, dim, 1)
        self.dw = LargeKernelDWConv(dim, lk_size, lk_impl=lk_impl)
        self.norm2 = nn.BatchNorm2d(2 * dim)
        self.pw2 = nn.Conv2d(2 * dim, dim, 1)
        self.act = nn.GELU()
        self.pw3 = nn.Conv2d(dim, dim, 1)
        self.ham = maybe_ham(ham, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pw1(self.norm1(x))
        b = self.dw(a)
        c = self.pw2(self.norm2(torch.cat([a, b], dim=1)))
        return self.ham(x + self.pw3(self.act(c)))


class LKMStage(nn.Sequential):
    """Optional Conv3×3 s2 + BN downsampling (``in_dim -> dim``), then ``depth`` LKM blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, lk_size: int, lk_impl: str, ham: bool):
        layers: list[nn.Module] = [ConvBN(in_dim, dim, 3, stride=2)] if downsample else []
        layers += [LKMBlock(dim, lk_size, lk_impl, ham) for _ in range(depth)]
        super().__init__(*layers)
