"""Class weights for the weighted cross-entropy: inverse pixel frequency of each class."""

from __future__ import annotations

import numpy as np

DEFAULT_CLIP = (1.0, 50.0)  # tcnet.md: normalised so the smallest weight is 1, clipped to [1, 50]


def class_weights_from_masks(
    masks,
    valid=None,
    clip: tuple[float, float] = DEFAULT_CLIP,
    num_classes: int = 2,
) -> list[float]:
    """Inverse pixel frequency per class, normalised so the smallest weight is 1, then clipped.

    ``w_c = (Σ_k n_k / n_c) / min_j (Σ_k n_k / n_j)``, clipped to ``clip``; ``n_c`` counts pixels
    of class ``c`` where ``valid`` is non-zero. A class with no pixels gets the upper clip (it has no
    pixels to weight, so the value does not matter); with no counted pixel at all every weight is 1.

    Args:
        masks: ``N x H x W`` (or one ``H x W``) array. ``num_classes == 2``: binary masks, any
            non-zero value is foreground (0/1, 0/255, bool). Otherwise class indices in
            ``[0, num_classes)``.
        valid: same shape, non-zero where a pixel counts (the retina FOV); ``None`` = all pixels.
        clip: ``(low, high)`` bounds applied after normalising.
        num_classes: 2 for binary masks (returns ``[w_bg, w_fg]``).

    Returns:
        ``num_classes`` floats.

    Shape:
        masks, valid ``N x H x W`` or ``H x W``.
    """
    masks = np.asarray(masks)
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != masks.shape:
            raise ValueError(f"valid has shape {valid.shape}, masks have shape {masks.shape}; they must match")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (2 for binary masks), got {num_classes}")
    _check_clip(clip)  # before counting: a bad clip should not wait for a 2000-image pass
    counts = np.zeros(num_classes, dtype=np.int64)
    # One image at a time, so a 2000 x 448 x 448 stack needs no second full-size temporary.
    chunks = [(masks, valid)] if masks.ndim < 3 else [
        (masks[i], None if valid is None else valid[i]) for i in range(masks.shape[0])
    ]
    for m, v in chunks:
        labels = (m != 0).astype(np.int64) if num_classes == 2 else m.astype(np.int64)
        if num_classes > 2 and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"masks hold class indices outside [0, {num_classes - 1}]")
        if v is not None:
            labels = labels[v != 0]
        counts += np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    return class_weights_from_counts(counts, clip)


def class_weights_from_counts(counts, clip: tuple[float, float] = DEFAULT_CLIP) -> list[float]:
    """:func:`class_weights_from_masks`'s rule from pixel counts per class (``counts[c]`` = pixels
    of class ``c``), for callers that counted as they went (the preprocess stage's workers)."""
    counts = np.asarray(counts, dtype=np.int64)
    num_classes = counts.shape[0]
    lo, hi = _check_clip(clip)
    if counts.sum() == 0:
        return [1.0] * num_classes
    present = counts > 0
    inv = np.full(num_classes, np.inf)
    inv[present] = counts.sum() / counts[present]
    w = inv / inv[present].min()
    return [float(x) for x in np.clip(w, lo, hi)]


def _check_clip(clip) -> tuple[float, float]:
    lo, hi = float(clip[0]), float(clip[1])
    if not 0 < lo <= hi:
        raise ValueError(f"clip must be (low, high) with 0 < low <= high, got {clip}")
    return lo, hi
