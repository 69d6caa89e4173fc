"""Scores from confusion counts: AC SE SP JA DI, and the ISIC thresholded Jaccard (TJA).

Undefined ratios (a zero denominator) score **1.0**, the rule of the official ISIC scorer
(``isic-challenge-scoring``): SE with no foreground in the truth, SP with no background, JA and DI
with an empty truth *and* an empty prediction (nothing to find, nothing wrongly found), AC with no
counted pixel. (retina-unet and VesselSeg return 0 instead; that only matters for pooled scores
over no pixel at all, which never happens on a real test set.)
"""

from __future__ import annotations

import numpy as np

from tcnet.metrics.confusion import is_tensor

METRICS = ("AC", "SE", "SP", "JA", "DI")
TJA_THRESHOLD = 0.65  # ISIC 2018: a per-image Jaccard below 0.65 counts as 0


def _ratio(num, den):
    """``num / den`` as float64, 1.0 where ``den == 0`` (NumPy or torch, scalar or array)."""
    if is_tensor(num) or is_tensor(den):
        import torch

        num = torch.as_tensor(num).double()
        den = torch.as_tensor(den, device=num.device).double()
        return torch.where(den > 0, num / den.clamp_min(1), torch.ones_like(num))
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.divide(num, den, out=np.ones(np.broadcast(num, den).shape), where=den > 0)
    return out[()] if out.ndim == 0 else out


def scores_from_counts(tp, fp, fn, tn) -> dict:
    """``{"AC", "SE", "SP", "JA", "DI"}`` from confusion counts; each in [0, 1].

    AC = (TP+TN)/N, SE = TP/(TP+FN), SP = TN/(TN+FP), JA = TP/(TP+FP+FN), DI = 2TP/(2TP+FP+FN);
    a zero denominator gives 1.0 (the ISIC scorer's rule). Scalars give Python floats; arrays
    (per-image counts) give float64 arrays; torch tensors give float64 tensors.
    """
    out = {
        "AC": _ratio(tp + tn, tp + fp + fn + tn),
        "SE": _ratio(tp, tp + fn),
        "SP": _ratio(tn, tn + fp),
        "JA": _ratio(tp, tp + fp + fn),
        "DI": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    if all(np.ndim(v) == 0 and not is_tensor(v) for v in out.values()):
        out = {k: float(v) for k, v in out.items()}
    return out


def thresholded_jaccard(ja, threshold: float = TJA_THRESHOLD):
    """ISIC "thresholded Jaccard": ``JA`` where ``JA >= threshold`` else 0 (per image)."""
    if is_tensor(ja):
        return ja * (ja >= threshold)
    ja_arr = np.asarray(ja, dtype=np.float64)
    out = np.where(ja_arr >= threshold, ja_arr, 0.0)
    return float(out) if out.ndim == 0 else out
