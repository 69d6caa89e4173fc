"""Small building blocks: normalisation, conv units, channel/spatial attention and HAM.

All modules work on channels-first maps ``B×C×H×W``. The pooled descriptors use ``mean``/``amax``
rather than adaptive pooling: same numbers, and deterministic backward kernels on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tcnet.models.gates import channel_gate, spatial_gate


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``B×C×H×W`` map (timm's ``LayerNorm2d``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvBNReLU(nn.Sequential):
    """Conv(k, stride, no bias) → BatchNorm → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ConvBlock(nn.Sequential):
    """The U-Net double convolution: (Conv3×3-BN-ReLU) × 2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels))


class ConvBN(nn.Sequential):
    """Conv(k, stride, no bias) → BatchNorm (the stem's and the CNN branch's downsampling unit)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
        )


class ConvMlp(nn.Module):
    """Transformer MLP on a map: Conv1×1 (C → ratio·C) → GELU → Conv1×1 (→ C)."""

    def __init__(self, channels: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * ratio)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``x · sigmoid(MLP(avgpool x) + MLP(maxpool x))``, shared MLP, ratio r.

    The MLP is Conv1×1 (C → max(C // r, 1)) → ReLU → Conv1×1 (→ C), without bias (CBAM, timm).
    Computed by :func:`tcnet.models.gates.channel_gate` (a leaner backward on CPU).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_gate(x, self.fc1.weight, self.fc2.weight)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``x · sigmoid(Conv7×7(concat[mean_c x, max_c x]))``.

    Computed by :func:`tcnet.models.gates.spatial_gate` (a leaner backward on CPU).
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"spatial attention needs an odd kernel_size ('same' padding), got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spatial_gate(x, self.conv.weight, self.conv.bias)


class HAM(nn.Module):
    """Hybrid attention module: channel attention, then spatial attention (CBAM order)."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        self.ca = ChannelAttention(channels, reduction)
        self.sa = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sa(self.ca(x))


def maybe_ham(enabled: bool, channels: int) -> nn.Module:
    """A :class:`HAM` where the placement asks for one, else ``nn.Identity`` (no control flow in forward)."""
    return HAM(channels) if enabled else nn.Identity()
