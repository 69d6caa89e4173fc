"""Per-batch Dice and Jaccard on torch tensors: the cheap validation metric during training.

Same rules as the core (``confusion`` + ``scores_from_counts``): per-image counts at probability
0.5 (``logit >= 0``), undefined ratios = 1.0, only valid pixels counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from tcnet.metrics.confusion import confusion
from tcnet.metrics.scores import scores_from_counts

if TYPE_CHECKING:  # torch is imported on use, so ``tcnet score`` starts without it
    import torch


def _bhw(x: "torch.Tensor", name: str) -> "torch.Tensor":
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"{name} must be B x H x W or B x 1 x H x W, got shape {tuple(x.shape)}")
    return x


def predict_foreground(logits: "torch.Tensor") -> "torch.Tensor":
    """Binary foreground ``B x H x W`` from logits: 1 channel ``logit >= 0`` (sigmoid >= 0.5);
    several channels: the arg-max class is not background (class 0)."""
    if logits.dim() != 4:
        raise ValueError(f"logits must be B x C x H x W, got shape {tuple(logits.shape)}")
    logits = logits.detach()
    if logits.shape[1] == 1:
        return logits[:, 0] >= 0
    return logits.argmax(dim=1) != 0


def batch_dice_jaccard(
    logits: "torch.Tensor",
    target: "torch.Tensor",
    valid: Optional["torch.Tensor"] = None,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Per-image ``(DI, JA)`` of a batch, float64 tensors of length ``B`` on the logits' device.

    Sum them over the validation set and divide by the image count for the mean (macro) scores
    that ``history.csv`` records as ``val_DI`` / ``val_JA``.

    Shape:
        logits ``B x C x H x W``; target (0/1 or class indices; floats >= 0.5 = foreground) and
        valid ``B x H x W`` or ``B x 1 x H x W``; returns two tensors of shape ``B``.
    """
    pred = predict_foreground(logits)
    t = _bhw(target.detach(), "target")
    t = t >= 0.5 if t.is_floating_point() else t != 0
    v = None
    if valid is not None:
        v = _bhw(valid.detach(), "valid")
        v = v >= 0.5 if v.is_floating_point() else v != 0
    s = scores_from_counts(*confusion(pred, t, v, batch=True))
    return s["DI"], s["JA"]
