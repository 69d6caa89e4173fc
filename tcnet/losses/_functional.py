"""The loss math as plain functions (the ``nn.Module`` wrappers in this package only hold settings).

Conventions shared by every function here:

* ``logits``: ``B x C x H x W`` raw network output. ``C == 1`` is the binary case (sigmoid);
  ``C >= 2`` is the multi-class case (softmax over ``C``).
* ``target``: binary case ``B x 1 x H x W`` or ``B x H x W`` holding 0/1 (any dtype; values > 0.5
  are foreground); multi-class case ``B x H x W`` (or ``B x 1 x H x W``) holding class indices.
* ``valid``: optional ``B x H x W`` (or ``B x 1 x H x W``) mask; only pixels where it is non-zero
  count (the retina field of view). ``None`` = every pixel counts.
* ``sum_across``: optional function that sums a tensor over the processes of a data-parallel
  training, keeping the graph (``tcnet.training.runtime.Dist.sum_across``). Both losses are ratios of
  sums over the batch; with it, every process computes them from the sums of the WHOLE batch of the
  optimiser step, so N processes with batch B/N each train exactly as one process with batch B
  (the per-process mean of Dice ratios would be another loss). ``None`` = this process's batch.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F


def _as_bhw(x: torch.Tensor, name: str, like: torch.Tensor) -> torch.Tensor:
    """``x`` as ``B x H x W`` matching ``like``'s batch and spatial size (drops a singleton channel)."""
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    expected = (like.shape[0], *like.shape[2:])
    if tuple(x.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected {expected} (or with a singleton channel axis) "
            f"to match logits of shape {tuple(like.shape)}"
        )
    return x


def _check_logits(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` in float32 at least: sums over millions of pixels are wrong in bf16/fp16."""
    if logits.dim() != 4:
        raise ValueError(f"logits must be B x C x H x W, got shape {tuple(logits.shape)}")
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _binary_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Foreground indicator ``B x H x W`` as the logits' float dtype."""
    t = _as_bhw(target, "target", logits)
    return (t > 0.5).to(logits.dtype) if t.is_floating_point() else (t > 0).to(logits.dtype)


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _class_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Class indices ``B x H x W`` (long), checked against the number of channels."""
    t = _as_bhw(target, "target", logits)
    t = t.round().long() if t.is_floating_point() else t.long()
    c = logits.shape[1]
    # The range check reads the target on the host: not possible inside a CUDA-graph capture
    # (train.cuda_graph), so only the eager steps (warm-up, short batches) check; replays do not.
    if t.numel() and not _capturing(t) and (int(t.min()) < 0 or int(t.max()) >= c):
        raise ValueError(f"target holds class indices outside [0, {c - 1}] for logits with {c} channels")
    return t


def _valid_weight(valid: Optional[torch.Tensor], logits: torch.Tensor) -> Optional[torch.Tensor]:
    if valid is None:
        return None
    return (_as_bhw(valid, "valid_mask", logits) != 0).to(logits.dtype)


SumAcross = Callable[[torch.Tensor], torch.Tensor]


def _total(sums: torch.Tensor, sum_across: Optional[SumAcross]) -> torch.Tensor:
    """``sums`` over the whole batch of the step: this process's alone, or added over the processes."""
    return sums if sum_across is None else sum_across(sums)


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: Optional[torch.Tensor] = None,
    smooth: float = 1.0,
    sum_across: Optional[SumAcross] = None,
) -> torch.Tensor:
    """Soft Dice loss on probabilities, computed over the whole batch ("per batch").

    Binary (``C == 1``): ``p = sigmoid(logits)``, ``1 - (2 Σ p·t + s) / (Σ p + Σ t + s)`` with the
    sums over every valid pixel of every image. Multi-class: ``p = softmax(logits)``, the same per
    class against the one-hot target, then the mean over all ``C`` classes (background included).

    Shape:
        logits ``B x C x H x W``; target, valid ``B x H x W`` or ``B x 1 x H x W``; returns a scalar.
    """
    logits = _check_logits(logits)
    v = _valid_weight(valid, logits)
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        t = _binary_target(target, logits)
        if v is not None:
            p, t = p * v, t * v
        inter, denom = _total(torch.stack([(p * t).sum(), p.sum() + t.sum()]), sum_across).unbind()
        return 1.0 - (2.0 * inter + smooth) / (denom + smooth)
    p = torch.softmax(logits, dim=1)
    t = F.one_hot(_class_target(target, logits), logits.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    if v is not None:
        p, t = p * v[:, None], t * v[:, None]
    dims = (0, 2, 3)
    inter, denom = _total(torch.stack([(p * t).sum(dims), p.sum(dims) + t.sum(dims)]), sum_across).unbind()
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def _weights_tensor(class_weights: Optional[Sequence[float]], n: int, logits: torch.Tensor) -> torch.Tensor:
    if class_weights is None:
        return torch.ones(n, dtype=logits.dtype, device=logits.device)
    w = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device).flatten()
    if w.numel() != n:
        raise ValueError(
            f"class_weights has {w.numel()} values for {n} classes; give [w_bg, w_fg] for a binary "
            f"(1-channel) model, or one weight per class for a {logits.shape[1]}-channel model"
        )
    return w


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: Optional[Sequence[float]] = None,
    valid: Optional[torch.Tensor] = None,
    sum_across: Optional[SumAcross] = None,
) -> torch.Tensor:
    """Class-weighted cross-entropy, the weighted mean over valid pixels.

    Binary (``C == 1``): BCE-with-logits per pixel, weighted ``w_bg`` on background and ``w_fg`` on
    foreground pixels (``class_weights = [w_bg, w_fg]``). Multi-class: cross-entropy with one
    weight per class. Both normalise by the summed weights of the counted pixels, like
    ``nn.CrossEntropyLoss(weight=...)``: so the binary loss equals the two-class loss on logits
    ``[0, z]``, and scaling all weights by a constant leaves the loss unchanged. No valid pixel
    gives 0 (still attached to the graph).

    Shape:
        logits ``B x C x H x W``; target, valid ``B x H x W`` or ``B x 1 x H x W``; returns a scalar.
    """
    logits = _check_logits(logits)
    v = _valid_weight(valid, logits)
    if logits.shape[1] == 1:
        w = _weights_tensor(class_weights, 2, logits)
        t = _binary_target(target, logits)
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], t, reduction="none")
        pw = w[0] * (1.0 - t) + w[1] * t
    else:
        w = _weights_tensor(class_weights, logits.shape[1], logits)
        t = _class_target(target, logits)
        per_pixel = F.cross_entropy(logits, t, reduction="none")  # unweighted; weights applied below
        pw = w[t]
    if v is not None:
        pw = pw * v
    # No valid pixel: numerator and weights are all 0 -> 0 (no host sync, graph kept).
    total, weight = _total(torch.stack([(per_pixel * pw).sum(), pw.sum()]), sum_across).unbind()
    return total / weight.clamp_min(1e-12)
