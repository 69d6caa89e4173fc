"""Class-weighted cross-entropy (binary: BCE-with-logits with [w_bg, w_fg] per pixel)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from tcnet.losses._functional import SumAcross, weighted_cross_entropy


class WeightedCrossEntropyLoss(nn.Module):
    """Cross-entropy with a weight per class, the weighted mean over the counted pixels.

    One output channel: BCE-with-logits, each pixel weighted ``w_bg`` or ``w_fg`` by its target
    (``class_weights = [w_bg, w_fg]``). Several channels: cross-entropy with one weight per class.
    ``None`` weights = all 1 (plain cross-entropy). ``valid_mask`` restricts which pixels count.

    Shape:
        - logits: ``B x C x H x W``
        - target: ``B x H x W`` or ``B x 1 x H x W`` (0/1, or class indices when ``C >= 2``)
        - valid_mask: ``B x H x W`` or ``B x 1 x H x W``, optional
        - output: scalar
    """

    def __init__(self, class_weights: Optional[Sequence[float]] = None, sum_across: Optional[SumAcross] = None):
        super().__init__()
        self.sum_across = sum_across  # data-parallel training: the sums over every process's images
        w = None if class_weights is None else torch.as_tensor([float(x) for x in class_weights])
        if w is not None and (w.numel() < 2 or bool((w <= 0).any()) or not bool(torch.isfinite(w).all())):
            raise ValueError(f"class_weights must be >= 2 positive finite numbers, got {list(class_weights)}")
        self.register_buffer("class_weights", w, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid_mask: Optional[torch.Tensor] = None):
        return weighted_cross_entropy(logits, target, self.class_weights, valid_mask, sum_across=self.sum_across)

    def extra_repr(self) -> str:
        w = None if self.class_weights is None else [round(float(x), 4) for x in self.class_weights]
        return f"class_weights={w}"
