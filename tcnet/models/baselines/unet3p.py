"""UNet 3+ (Huang et al. 2020): U-Net encoder, decoder with full-scale skip connections.

Each decoder node ``X_De^i`` (i = 4 … 1) gathers every scale, each brought to its resolution and
to ``cat_channels`` (64) channels by a Conv3×3-BN-ReLU:

- finer encoder maps ``X_En^j`` (j < i): max-pooled by ``2^(i-j)``;
- the same-scale encoder map ``X_En^i``: as is;
- coarser decoder maps ``X_De^j`` (j > i, with ``X_De^5 = X_En^5``): bilinear upsampling by ``2^(j-i)``;

then concatenated (5 × 64 = 320 channels) and fused by Conv3×3-BN-ReLU. A 3×3 head on ``X_De^1``
gives the logits. Filters ``[64, 128, 256, 512, 1024]`` as in the paper; the deep-supervision and
classification-guided-module variants of the paper are not built (the plain UNet 3+).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tcnet.models.layers import ConvBlock, ConvBNReLU


class UNet3Plus(nn.Module):
    def __init__(
        self,
        num_classes: int = 1,
        in_channels: int = 3,
        filters: tuple[int, ...] = (64, 128, 256, 512, 1024),
        cat_channels: int = 64,
    ):
        super().__init__()
        n = len(filters)
        self.n = n
        self.encoders = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else filters[i - 1], filters[i]) for i in range(n)
        )
        up_channels = cat_channels * n
        # links[i][j]: the Conv3×3-BN-ReLU bringing scale j to decoder node i (0-based, i < n-1).
        self.links = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(n - 1):
            row = nn.ModuleList()
            for j in range(n):
                src = filters[j] if (j <= i or j == n - 1) else up_channels
                row.append(ConvBNReLU(src, cat_channels))
            self.links.append(row)
            self.fuse.append(ConvBNReLU(up_channels, up_channels))
        self.head = nn.Conv2d(up_channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = []
        for i, block in enumerate(self.encoders):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            enc.append(x)
        n = self.n
        dec: dict[int, torch.Tensor] = {n - 1: enc[n - 1]}
        for i in reversed(range(n - 1)):
            size = enc[i].shape[-2:]
            parts = []
            for j in range(n):
                if j < i:
                    src = F.max_pool2d(enc[j], 2 ** (i - j))
                elif j == i:
                    src = enc[j]
                else:
                    src = F.interpolate(dec[j], size=size, mode="bilinear", align_corners=False)
                parts.append(self.links[i][j](src))
            dec[i] = self.fuse[i](torch.cat(parts, dim=1))
        return self.head(dec[0])


def unet3p(num_classes: int = 1, in_channels: int = 3, base_channels: int = 64) -> nn.Module:
    """UNet 3+ with filters ``base_channels · [1, 2, 4, 8, 16]`` (paper: 64)."""
    filters = tuple(base_channels * 2**i for i in range(5))
    return UNet3Plus(num_classes=num_classes, in_channels=in_channels, filters=filters)
