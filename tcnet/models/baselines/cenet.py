"""CE-Net (Gu et al. 2019): ResNet-34 encoder, dense atrous convolution (DAC) and residual
multi-kernel pooling (RMP) blocks, and a transposed-convolution decoder with additive skips.

Follows the authors' reference code (``CE_Net_``): torchvision ResNet-34 (``weights=None``, trained
from scratch), DAC on the 1/32 map, RMP adding four one-channel maps (512 -> 516 channels), four
decoder blocks (1×1 reduce, 3×3 transposed conv ×2, 1×1 expand) with ``d_i = decoder(d_{i+1}) +
e_i``, then a 4×4 transposed conv and two 3×3 convs to the logits (no final sigmoid: logits).

Small inputs (choice): RMP's pools have kernels 2, 3, 5, 6; on a map smaller than a kernel (64×64
input: a 2×2 map) the kernel is clamped to the map size, so every branch still gives >= 1 value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet34


class DACBlock(nn.Module):
    """Four cascaded branches of dilated 3×3 convs (rates 1, 3, 5), summed with the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.dilate1 = nn.Conv2d(channels, channels, 3, dilation=1, padding=1)
        self.dilate2 = nn.Conv2d(channels, channels, 3, dilation=3, padding=3)
        self.dilate3 = nn.Conv2d(channels, channels, 3, dilation=5, padding=5)
        self.conv1x1 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.dilate1(x)
        d21 = self.dilate2(d1)
        b1 = F.relu(d1)
        b2 = F.relu(self.conv1x1(self.dilate2(x)))
        b3 = F.relu(self.conv1x1(d21))
        b4 = F.relu(self.conv1x1(self.dilate3(d21)))
        return x + b1 + b2 + b3 + b4


class RMPBlock(nn.Module):
    """Max-pool at 2, 3, 5, 6 (stride = kernel) → 1×1 conv to 1 channel → upsample; concat with x."""

    def __init__(self, channels: int, kernels: tuple[int, ...] = (2, 3, 5, 6)):
        super().__init__()
        self.kernels = kernels
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Python ints, not traced sizes: min(k, h) of a traced size made the pool kernel a tensor, which
        # the ONNX exporter refuses (maps under 6 px, e.g. at 64²); the exports are at a fixed size anyway
        h, w = int(x.shape[-2]), int(x.shape[-1])
        maps = []
        for k in self.kernels:
            kh, kw = min(k, h), min(k, w)
            pooled = F.max_pool2d(x, (kh, kw), stride=(kh, kw))
            maps.append(F.interpolate(self.conv(pooled), size=(h, w), mode="bilinear", align_corners=False))
        return torch.cat([*maps, x], dim=1)


class DecoderBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        mid = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )


class CENet(nn.Module):
    """``B×in_channels×H×W -> B×num_classes×H×W`` logits (H, W multiples of 32)."""

    def __init__(self, num_classes: int = 1, in_channels: int = 3):
        super().__init__()
        filters = (64, 128, 256, 512)
        r = resnet34(weights=None)
        self.firstconv = r.conv1 if in_channels == 3 else nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.firstbn, self.firstrelu, self.firstmaxpool = r.bn1, r.relu, r.maxpool
        self.encoder1, self.encoder2, self.encoder3, self.encoder4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.dblock = DACBlock(filters[3])
        self.spp = RMPBlock(filters[3])
        self.decoder4 = DecoderBlock(filters[3] + 4, filters[2])
        self.decoder3 = DecoderBlock(filters[2], filters[1])
        self.decoder2 = DecoderBlock(filters[1], filters[0])
        self.decoder1 = DecoderBlock(filters[0], filters[0])
        self.finaldeconv1 = nn.ConvTranspose2d(filters[0], 32, 4, 2, 1)
        self.finalconv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.finalconv3 = nn.Conv2d(32, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.firstmaxpool(self.firstrelu(self.firstbn(self.firstconv(x))))
        e1 = self.encoder1(x)
        e2 = self.encoder2(e1)
        e3 = self.encoder3(e2)
        e4 = self.spp(self.dblock(self.encoder4(e3)))
        d4 = self.decoder4(e4) + e3
        d3 = self.decoder3(d4) + e2
        d2 = self.decoder2(d3) + e1
        d1 = self.decoder1(d2)
        out = F.relu(self.finaldeconv1(d1))
        out = F.relu(self.finalconv2(out))
        return self.finalconv3(out)


def cenet(num_classes: int = 1, in_channels: int = 3) -> nn.Module:
    return CENet(num_classes=num_classes, in_channels=in_channels)
