"""The training loss: ``λ·WCE + (1 − λ)·Dice``, deep supervision over heads, and ``build_loss``."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from tcnet.losses._functional import SumAcross
from tcnet.losses.dice import DiceLoss
from tcnet.losses.wce import WeightedCrossEntropyLoss

DEEP_SUPERVISION_WEIGHTS = (1.0, 0.5, 0.25, 0.125)  # main head first


class CombinedLoss(nn.Module):
    """``L = λ · WCE + (1 − λ) · Dice`` with ``λ = ce_weight`` in [0, 1] (tcnet.md "Loss").

    A term whose factor is 0 is not computed, so ``λ = 0`` is exactly the Dice loss and ``λ = 1``
    exactly the weighted cross-entropy.

    Args:
        ce_weight: λ, the share of the weighted cross-entropy.
        class_weights: ``[w_bg, w_fg]`` for a 1-channel model, one weight per class otherwise;
            ``None`` = unweighted.
        num_classes: output channels of the model (1 = binary with sigmoid; >= 2 = softmax).
        smooth: the Dice smoothing constant.
        sum_across: data-parallel training: sums a tensor over the processes (keeping the graph),
            so both terms are computed from the whole batch of the step (``tcnet.losses._functional``).

    Shape:
        - logits: ``B x num_classes x H x W``
        - target: ``B x H x W`` or ``B x 1 x H x W`` (0/1, or class indices when ``num_classes >= 2``)
        - valid_mask: ``B x H x W`` or ``B x 1 x H x W``, optional (only non-zero pixels count)
        - output: scalar
    """

    def __init__(
        self,
        ce_weight: float = 0.5,
        class_weights: Optional[Sequence[float]] = None,
        num_classes: int = 1,
        smooth: float = 1.0,
        sum_across: Optional[SumAcross] = None,
    ):
        super().__init__()
        if not 0.0 <= float(ce_weight) <= 1.0:
            raise ValueError(f"ce_weight (λ) must be in [0, 1], got {ce_weight}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1 (1 = binary sigmoid output), got {num_classes}")
        expected = 2 if num_classes == 1 else num_classes
        if class_weights is not None and len(class_weights) != expected:
            raise ValueError(
                f"class_weights {list(class_weights)} has {len(class_weights)} values; a model with "
                f"{num_classes} output channel(s) needs {expected}"
                + (" ([w_bg, w_fg])" if num_classes == 1 else "")
            )
        self.ce_weight = float(ce_weight)
        self.num_classes = int(num_classes)
        self.wce = WeightedCrossEntropyLoss(class_weights, sum_across)
        self.dice = DiceLoss(smooth, sum_across)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid_mask: Optional[torch.Tensor] = None):
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits of shape {tuple(logits.shape)}; expected B x {self.num_classes} x H x W "
                f"(the loss was built for num_classes={self.num_classes})"
            )
        lam = self.ce_weight
        loss = None
        if lam > 0.0:
            loss = lam * self.wce(logits, target, valid_mask)
        if lam < 1.0:
            d = (1.0 - lam) * self.dice(logits, target, valid_mask)
            loss = d if loss is None else loss + d
        return loss

    def extra_repr(self) -> str:
        return f"ce_weight={self.ce_weight}, num_classes={self.num_classes}"


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``base`` over the heads ``[main, aux1, aux2, ...]``, weights normalised.

    Models return that list in training mode (every head at full resolution) and one tensor in
    eval mode; both are accepted: a tensor is scored by ``base`` alone. With ``k`` heads the first
    ``k`` weights are used and divided by their sum, so the loss stays on the scale of ``base``.

    Shape:
        - outputs: ``B x C x H x W`` or a list/tuple of such tensors (same shape)
        - target, valid_mask: as ``base`` takes them
        - output: scalar
    """

    def __init__(self, base: nn.Module, weights: Sequence[float] = DEEP_SUPERVISION_WEIGHTS):
        super().__init__()
        weights = tuple(float(w) for w in weights)
        if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"deep-supervision weights must be non-negative with a positive sum, got {weights}")
        self.base = base
        self.weights = weights

    def head_weights(self, n_heads: int) -> list[float]:
        """The normalised weights for ``n_heads`` heads (main first)."""
        if n_heads > len(self.weights):
            raise ValueError(
                f"the model returned {n_heads} heads but deep supervision has only {len(self.weights)} "
                f"weights {self.weights}; pass one weight per head"
            )
        w = self.weights[:n_heads]
        if sum(w) <= 0:
            raise ValueError(f"deep-supervision weights {w} for {n_heads} heads sum to 0")
        return [x / sum(w) for x in w]

    def forward(
        self,
        outputs: Union[torch.Tensor, Sequence[torch.Tensor]],
        target: torch.Tensor,
        valid_mask: Optional[torch.Tensor] = None,
    ):
        if isinstance(outputs, torch.Tensor):
            return self.base(outputs, target, valid_mask)
        outputs = list(outputs)
        if not outputs:
            raise ValueError("deep supervision got an empty list of model outputs")
        main_shape = tuple(outputs[0].shape)
        for k, o in enumerate(outputs[1:], start=1):
            if tuple(o.shape) != main_shape:
                raise ValueError(
                    f"deep-supervision head {k} has shape {tuple(o.shape)}, the main head {main_shape}; "
                    "every head must be at full resolution"
                )
        total = None
        for w, o in zip(self.head_weights(len(outputs)), outputs):
            if w == 0.0:
                continue
            term = w * self.base(o, target, valid_mask)
            total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


def build_loss(
    loss_cfg,
    class_weights_from_stats: Optional[Sequence[float]] = None,
    num_classes: int = 1,
    deep_supervision: bool = False,
    sum_across: Optional[SumAcross] = None,
) -> nn.Module:
    """The training loss from ``train.loss`` (a :class:`tcnet.config.LossConfig`).

    Class weights: ``loss_cfg.class_weights`` when set by hand, else ``class_weights_from_stats``
    (the train stage passes the run's own: from the pixel counts of the images it trains on,
    ``manifest.csv``), else unweighted. With
    ``deep_supervision`` the loss is wrapped in :class:`DeepSupervisionLoss`; it still accepts a
    single tensor, so the same loss object scores eval-mode outputs. ``sum_across``: see
    :class:`CombinedLoss` (a training under DDP; never for a validation that one process runs alone).
    """
    weights = loss_cfg.class_weights if loss_cfg.class_weights is not None else class_weights_from_stats
    if weights is not None:
        weights = [float(w) for w in weights]
    loss: nn.Module = CombinedLoss(ce_weight=loss_cfg.ce_weight, class_weights=weights, num_classes=num_classes,
                                   sum_across=sum_across)
    if deep_supervision:
        loss = DeepSupervisionLoss(loss)
    return loss
