"""Losses: soft Dice, class-weighted cross-entropy, their λ-mix, and deep supervision.

``L = λ·WCE + (1 − λ)·Dice`` (tcnet.md "Loss"); :func:`build_loss` makes it from ``train.loss``.
:func:`class_weights_from_masks` is the class-weight rule the preprocess stage writes to
``stats.json``.
"""

import importlib

# Lazy: the preprocess stage needs only the NumPy class-weight rule, not torch (seconds of import).
_WHERE = {
    "soft_dice_loss": "_functional",
    "weighted_cross_entropy": "_functional",
    "class_weights_from_masks": "class_weights",
    "class_weights_from_counts": "class_weights",
    "CombinedLoss": "combined",
    "DeepSupervisionLoss": "combined",
    "build_loss": "combined",
    "DiceLoss": "dice",
    "WeightedCrossEntropyLoss": "wce",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"tcnet.losses.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'tcnet.losses' has no attribute {name!r}")

__all__ = [
    "CombinedLoss",
    "DeepSupervisionLoss",
    "DiceLoss",
    "WeightedCrossEntropyLoss",
    "build_loss",
    "class_weights_from_counts",
    "class_weights_from_masks",
    "soft_dice_loss",
    "weighted_cross_entropy",
]
