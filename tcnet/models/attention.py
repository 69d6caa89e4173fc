"""Spatial-reduction multi-head self-attention (PVT), through ``F.scaled_dot_product_attention``.

Queries come from every position of the map; keys and values from the map reduced by a strided
``sr×sr`` convolution + LayerNorm (PVT v1), so the cost is ``N · N/sr²`` instead of ``N²``.
SDPA picks the flash / memory-efficient kernels on GPU; no softmax(QKᵀ) is ever built by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialReductionAttention(nn.Module):
    """Multi-head self-attention on a ``B×C×H×W`` map; keys/values pooled by ``sr_ratio``.

    Shape: ``B×C×H×W -> B×C×H×W``. ``H`` and ``W`` must be multiples of ``sr_ratio``
    (true for TCNet on inputs that are multiples of 32).
    """

    def __init__(self, dim: int, num_heads: int = 1, sr_ratio: int = 1, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        else:
            self.sr = nn.Identity()
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h, d = self.num_heads, C // self.num_heads
        tokens = x.flatten(2).transpose(1, 2)  # B×N×C
        q = self.q(tokens).reshape(B, H * W, h, d).transpose(1, 2)  # B×h×N×d
        kv_src = self.norm(self.sr(x).flatten(2).transpose(1, 2))  # B×M×C, M = N / sr²
        kv = self.kv(kv_src).reshape(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)  # 2×B×h×M×d
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # B×h×N×d
        out = self.proj(out.transpose(1, 2).reshape(B, H * W, C))
        return out.transpose(1, 2).reshape(B, C, H, W)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"
