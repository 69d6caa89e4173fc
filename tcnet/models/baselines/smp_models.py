"""U-Net, U-Net++, DeepLabV3 and DeepLabV3+ from segmentation-models-pytorch, trained from scratch.

``encoder_weights=None`` always: nothing is downloaded. The encoder is ResNet-34 unless
``encoder_name`` says otherwise (any smp encoder name).

DeepLabV3/V3+ pool the whole map to 1×1 in ASPP's image-pooling branch and follow it with a
BatchNorm; in training mode with batch 1 that BatchNorm sees one value per channel and PyTorch
raises. :class:`PooledBatchNorm2d` replaces it: identical to ``nn.BatchNorm2d`` whenever the batch
holds more than one value per channel, and normalises with the running statistics (without updating
them) when it holds exactly one.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_ENCODER = "resnet34"


class PooledBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that tolerates a single value per channel in training mode (see module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def _patch_aspp_pooling(model: nn.Module) -> nn.Module:
    from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPPPooling

    for m in model.modules():
        if isinstance(m, ASPPPooling):
            for i, sub in enumerate(m):
                if type(sub) is nn.BatchNorm2d:
                    bn = PooledBatchNorm2d(sub.num_features, sub.eps, sub.momentum, sub.affine, sub.track_running_stats)
                    bn.load_state_dict(sub.state_dict())
                    m[i] = bn
    return model


def unet(num_classes: int = 1, in_channels: int = 3, encoder_name: str = DEFAULT_ENCODER) -> nn.Module:
    """smp U-Net (Ronneberger 2015 decoder on a ResNet-34 encoder)."""
    return smp.Unet(encoder_name, encoder_weights=None, in_channels=in_channels, classes=num_classes)


def unetpp(num_classes: int = 1, in_channels: int = 3, encoder_name: str = DEFAULT_ENCODER) -> nn.Module:
    """smp U-Net++ (Zhou 2018, nested dense skips) on a ResNet-34 encoder."""
    return smp.UnetPlusPlus(encoder_name, encoder_weights=None, in_channels=in_channels, classes=num_classes)


def deeplabv3(num_classes: int = 1, in_channels: int = 3, encoder_name: str = DEFAULT_ENCODER) -> nn.Module:
    """smp DeepLabV3 (Chen 2017: dilated encoder, output stride 8, ASPP), logits upsampled ×8."""
    model = smp.DeepLabV3(encoder_name, encoder_weights=None, in_channels=in_channels, classes=num_classes)
    return _patch_aspp_pooling(model)


def deeplabv3p(num_classes: int = 1, in_channels: int = 3, encoder_name: str = DEFAULT_ENCODER) -> nn.Module:
    """smp DeepLabV3+ (Chen 2018: ASPP at output stride 16 + a light decoder with the 1/4 features)."""
    model = smp.DeepLabV3Plus(encoder_name, encoder_weights=None, in_channels=in_channels, classes=num_classes)
    return _patch_aspp_pooling(model)
