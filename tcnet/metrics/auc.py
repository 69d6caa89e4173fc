"""Area under the ROC curve and ROC points, by scikit-learn.

One-class truth (no foreground, or no background, among the counted pixels) has no ROC curve:
:func:`roc_auc` returns NaN there (scikit-learn raises); means skip NaN (``nanmean``).

For pooled AUC over a whole test set without holding every probability in memory,
:class:`ProbabilityHistogram` counts the probabilities of foreground and background pixels in
``bins`` equal bins (default 2**16); scikit-learn then scores the bin values weighted by those
counts. That is exact for probabilities with at most 16 bits of resolution (8-bit PNGs included)
and otherwise differs from the exact AUC only through ties created inside one bin (typically
< 1e-5).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

ROC_POINTS = 200  # at most this many points in a returned ROC curve
AUC_BINS = 65536


def _flat_valid(probs, truth, valid) -> tuple[np.ndarray, np.ndarray]:
    probs, truth = _numpy(probs), _numpy(truth)
    if probs.shape != truth.shape:
        raise ValueError(f"probs have shape {probs.shape}, truth has shape {truth.shape}; they must match")
    t = truth >= 0.5 if np.issubdtype(truth.dtype, np.floating) else truth != 0
    if valid is not None:
        valid = _numpy(valid)
        if valid.shape != truth.shape:
            raise ValueError(f"valid has shape {valid.shape}, truth has shape {truth.shape}; they must match")
        keep = valid != 0
        return probs[keep].astype(np.float64, copy=False), t[keep]
    return probs.ravel().astype(np.float64, copy=False), t.ravel()


def _numpy(x) -> np.ndarray:
    if type(x).__module__.split(".")[0] == "torch":
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def roc_auc(probs, truth, valid=None, sample_weight=None) -> float:
    """ROC AUC of ``probs`` against binary ``truth`` over the valid pixels; NaN for one-class truth.

    Shape:
        probs, truth, valid: the same shape (any); truth is bool/integer (non-zero = foreground) or
        float (>= 0.5 = foreground).
    """
    from sklearn.metrics import roc_auc_score

    p, t = _flat_valid(probs, truth, valid)
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64).ravel()
    if not _two_classes(t, sample_weight):
        return math.nan
    return float(roc_auc_score(t, p, sample_weight=sample_weight))


def _two_classes(t: np.ndarray, w: Optional[np.ndarray]) -> bool:
    if w is None:
        n_pos = int(np.count_nonzero(t))
        return 0 < n_pos < t.size
    return float(w[t].sum()) > 0 and float(w[~t].sum()) > 0


def roc_curve(probs, truth, valid=None, max_points: int = ROC_POINTS, sample_weight=None):
    """ROC points ``(fpr, tpr)`` (float64 arrays, from (0, 0) to (1, 1)), at most ``max_points``.

    scikit-learn's ``roc_curve`` (collinear points dropped), then thinned evenly along the curve's
    length when longer than ``max_points`` (see :func:`downsample_curve`). One-class truth gives
    empty arrays.
    """
    from sklearn.metrics import roc_curve as _sk_roc_curve

    p, t = _flat_valid(probs, truth, valid)
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64).ravel()
    if not _two_classes(t, sample_weight):
        return np.zeros(0), np.zeros(0)
    fpr, tpr, _ = _sk_roc_curve(t, p, sample_weight=sample_weight)
    return downsample_curve(fpr, tpr, max_points)


def downsample_curve(x: np.ndarray, y: np.ndarray, max_points: int = ROC_POINTS):
    """At most ``max_points`` of the curve's own points, evenly spaced along its L1 arc length.

    The first and last points are always kept; no point is invented or interpolated.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    if x.size <= max_points:
        return x, y
    s = np.concatenate([[0.0], np.cumsum(np.abs(np.diff(x)) + np.abs(np.diff(y)))])
    idx = np.searchsorted(s, np.linspace(0.0, s[-1], max_points), side="left")
    idx = np.unique(np.clip(np.concatenate([[0], idx, [x.size - 1]]), 0, x.size - 1))
    return x[idx], y[idx]


class ProbabilityHistogram:
    """Counts of foreground / background pixel probabilities in ``bins`` bins (bounded memory).

    ``add`` takes flat probabilities in [0, 1] with their binary truth; ``auc()`` and ``roc()``
    score the bin values weighted by the counts with scikit-learn.
    """

    def __init__(self, bins: int = AUC_BINS):
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = int(bins)
        self.pos = np.zeros(self.bins, dtype=np.int64)
        self.neg = np.zeros(self.bins, dtype=np.int64)

    def add(self, probs: np.ndarray, truth: np.ndarray) -> None:
        q = np.rint(np.clip(probs, 0.0, 1.0) * (self.bins - 1)).astype(np.int64)
        t = truth.astype(bool)
        self.pos += np.bincount(q[t], minlength=self.bins)
        self.neg += np.bincount(q[~t], minlength=self.bins)

    def _weighted(self):
        used_p, used_n = np.flatnonzero(self.pos), np.flatnonzero(self.neg)
        values = np.concatenate([used_p, used_n]) / (self.bins - 1)
        truth = np.concatenate([np.ones(used_p.size, bool), np.zeros(used_n.size, bool)])
        weight = np.concatenate([self.pos[used_p], self.neg[used_n]]).astype(np.float64)
        return values, truth, weight

    def auc(self) -> float:
        values, truth, weight = self._weighted()
        return roc_auc(values, truth, sample_weight=weight)

    def roc(self, max_points: int = ROC_POINTS):
        values, truth, weight = self._weighted()
        return roc_curve(values, truth, max_points=max_points, sample_weight=weight)
