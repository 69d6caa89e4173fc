"""Multi-scale fusion module (MFM): joins the CNN and Transformer features of one scale.

At scale i, with ``C_i`` (CNN branch), ``T_i`` (Transformer branch) and ``F_{i-1}`` the fused map
of the finer scale (absent at i = 1)::

    upper  = CA(T_i)                                   # channel attention, r = 16
    middle = Conv3×3-BN-ReLU(T_i ⊙ C_i)                # element-wise interaction
    L      = C_i  (i = 1)   |   C_i + Conv1×1(MaxPool2(F_{i-1}))
    lower  = SA(L)                                     # spatial attention, 7×7
    f      = Conv1×1(concat[upper, middle, lower])     # 3C -> C
    F_i    = f + Conv3×3-BN-ReLU(f)                    # residual
    F_i    = F_i + MHSA(LN(F_i))                       # only at the two coarsest scales
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tcnet.models.attention import SpatialReductionAttention
from tcnet.models.layers import ChannelAttention, ConvBNReLU, LayerNorm2d, SpatialAttention


class MFM(nn.Module):
    """Fuse ``C_i``, ``T_i`` (``B×dim×H×W``) and optionally ``F_{i-1}`` (``B×prev_dim×2H×2W``).

    ``prev_dim=None``: the finest scale (no ``F_{i-1}`` input). ``num_heads=0``: no MHSA.
    """

    def __init__(self, dim: int, prev_dim: int | None = None, num_heads: int = 0, sr_ratio: int = 1):
        super().__init__()
        self.upper = ChannelAttention(dim)
        self.middle = ConvBNReLU(dim, dim, 3)
        self.prev_proj = nn.Conv2d(prev_dim, dim, 1) if prev_dim is not None else None
        self.lower = SpatialAttention()
        self.fuse = nn.Conv2d(3 * dim, dim, 1)
        self.refine = ConvBNReLU(dim, dim, 3)
        if num_heads > 0:
            self.attn_norm = LayerNorm2d(dim)
            self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio)
        else:
            self.attn_norm = self.attn = None

    def forward(self, c: torch.Tensor, t: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        upper = self.upper(t)
        middle = self.middle(t * c)
        low = c
        if self.prev_proj is not None:
            if prev is None:
                raise ValueError("this MFM fuses a finer scale: pass prev (F_{i-1})")
            low = c + self.prev_proj(F.max_pool2d(prev, 2))
        lower = self.lower(low)
        f = self.fuse(torch.cat([upper, middle, lower], dim=1))
        f = f + self.refine(f)
        if self.attn is not None:
            f = f + self.attn(self.attn_norm(f))
        return f
