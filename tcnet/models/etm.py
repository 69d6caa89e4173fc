"""The Transformer branch: patch embedding and enhanced Transformer module (ETM) blocks.

ETM block (paper: an upper and a lower part of the same structure, each with three LayerNorms, one
multi-head self-attention layer and one 31×31 depthwise convolution; the third LN implies an MLP)::

    for part in (upper, lower):      # same structure, separate weights
        x = x + MHSA(LN(x))          # spatial-reduction attention, sr = [8, 4, 2, 1] per stage
        x = x + DW31×31(LN(x))       # on the 2-D token map
        x = x + MLP(LN(x))           # ratio 4, GELU
"""

from __future__ import annotations

import torch
from torch import nn

from tcnet.models.attention import SpatialReductionAttention
from tcnet.models.layers import ConvMlp, LayerNorm2d
from tcnet.models.lk_conv import LargeKernelDWConv


class ETMPart(nn.Module):
    """One half of an ETM block (attention, large-kernel depthwise conv, MLP; each pre-LN residual)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, lk_size: int, lk_impl: str, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio)
        self.norm2 = LayerNorm2d(dim)
        self.dw = LargeKernelDWConv(dim, lk_size, lk_impl=lk_impl)
        self.norm3 = LayerNorm2d(dim)
        self.mlp = ConvMlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.dw(self.norm2(x))
        return x + self.mlp(self.norm3(x))


class ETMBlock(nn.Module):
    """Upper part then lower part: ``B×C×H×W -> B×C×H×W``."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, lk_size: int, lk_impl: str, mlp_ratio: float = 4.0):
        super().__init__()
        self.upper = ETMPart(dim, num_heads, sr_ratio, lk_size, lk_impl, mlp_ratio)
        self.lower = ETMPart(dim, num_heads, sr_ratio, lk_size, lk_impl, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lower(self.upper(x))


class Downsample(nn.Sequential):
    """Conv(k, stride k or 2) → LayerNorm2d: the patch embedding (4×4 s4) and the between-stage step (3×3 s2)."""

    def __init__(self, in_dim: int, dim: int, kernel_size: int, stride: int):
        padding = (kernel_size - stride + 1) // 2
        super().__init__(nn.Conv2d(in_dim, dim, kernel_size, stride, padding=padding), LayerNorm2d(dim))


class ETMStage(nn.Sequential):
    """Patch embedding (first stage, from the image) or Conv3×3 s2 + LN, then ``depth`` ETM blocks."""

    def __init__(
        self, in_dim: int, dim: int, depth: int, first: bool, num_heads: int, sr_ratio: int,
        lk_size: int, lk_impl: str, mlp_ratio: float = 4.0,
    ):
        down = Downsample(in_dim, dim, 4, 4) if first else Downsample(in_dim, dim, 3, 2)
        blocks = [ETMBlock(dim, num_heads, sr_ratio, lk_size, lk_impl, mlp_ratio) for _ in range(depth)]
        super().__init__(down, *blocks)
