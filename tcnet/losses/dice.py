"""Soft Dice loss on probabilities (smooth = 1, per batch)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tcnet.losses._functional import SumAcross, soft_dice_loss


class DiceLoss(nn.Module):
    """``1 - (2 Σ p·t + smooth) / (Σ p + Σ t + smooth)`` over the whole batch.

    One output channel: sigmoid probabilities against the 0/1 target. Several channels: softmax
    probabilities against the one-hot target, per class, then the mean over the classes.
    ``valid_mask`` restricts the sums to the pixels where it is non-zero (retina FOV).

    Shape:
        - logits: ``B x C x H x W``
        - target: ``B x H x W`` or ``B x 1 x H x W`` (0/1, or class indices when ``C >= 2``)
        - valid_mask: ``B x H x W`` or ``B x 1 x H x W``, optional
        - output: scalar
    """

    def __init__(self, smooth: float = 1.0, sum_across: Optional[SumAcross] = None):
        super().__init__()
        self.smooth = float(smooth)
        self.sum_across = sum_across  # data-parallel training: the sums over every process's images

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid_mask: Optional[torch.Tensor] = None):
        return soft_dice_loss(logits, target, valid_mask, smooth=self.smooth, sum_across=self.sum_across)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}"
