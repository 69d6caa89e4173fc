"""FCN baseline: torchvision's ``fcn_resnet50``, built without any weights, returning plain logits.

Choice: torchvision's FCN (Long 2015 head on a dilated ResNet-50, output stride 8, logits upsampled
bilinearly) rather than the original VGG-16 FCN-8s: it is maintained library code, trains from
scratch with BatchNorm, and is the FCN that current segmentation comparisons run. No auxiliary
head (``aux_loss=False``); ``forward`` returns the ``"out"`` tensor, not torchvision's dict.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.segmentation import fcn_resnet50


class FCN(nn.Module):
    """``B×in_channels×H×W -> B×num_classes×H×W`` logits."""

    def __init__(self, num_classes: int = 1, in_channels: int = 3):
        super().__init__()
        self.net = fcn_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
        if in_channels != 3:
            old = self.net.backbone.conv1
            self.net.backbone.conv1 = nn.Conv2d(in_channels, old.out_channels, 7, 2, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def fcn(num_classes: int = 1, in_channels: int = 3) -> nn.Module:
    return FCN(num_classes=num_classes, in_channels=in_channels)
