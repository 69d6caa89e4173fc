"""Area under the ROC curve and ROC points, by scikit-learn.

One-class truth (no foreground, or no background, among the counted pixels) has no ROC curve:
:func:`roc_auc` returns NaN there (scikit-learn raises); means skip NaN (``nanmean``).

For pooled AUC over a whole test set without holding every probability in memory,
:class:`ProbabilityHistogram` counts the probabilities of foreground and background pixels in
bins: ``bins`` equal steps across [0, 1] (default 2**16), except within ``2**TAIL_BITS`` steps of
0 and of 1, where a trained model puts most pixels and equal steps would tie them all (every
probability below 7.6e-6 fell in one bin): there the bins follow float32's own spacing, each
``2**-TAIL_BITS``-``2**-(TAIL_BITS + 1)`` of its value (of ``1 - p`` near 1) wide, down to the
smallest float. scikit-learn then scores the bins weighted by their counts. That is exact for
probabilities with at most 16 bits of resolution (8-bit PNGs included) and otherwise differs from
the exact AUC only through ties made inside one bin: within ~1e-6 of scikit-learn's on 400 000
simulated pixels from barely separated to very confident logits (``tests/metrics/test_auc.py``;
equal steps alone were off by up to 7e-3 there).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np

ROC_POINTS = 200  # at most this many points in a returned ROC curve
AUC_BINS = 65536
TAIL_BITS = 7  # float32 mantissa bits that split the bins near 0 and 1 (relative width <= 2**-7)
_SHIFT = 23 - TAIL_BITS  # float32's 23 mantissa bits, less those kept


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
    """Counts of foreground / background pixel probabilities in bins (bounded memory; the layout
    is the module's docstring's): ``pos`` and ``neg``, ``size`` counters each, in the order of the
    probabilities; ``values`` is the lowest float32 probability each bin takes (thresholds: ``p >=
    values[b]`` is every bin from ``b`` on), ``layout`` names the binning.

    ``add`` takes flat probabilities in [0, 1] with their binary truth; ``auc()`` and ``roc()``
    score the bins weighted by the counts with scikit-learn.
    """

    def __init__(self, bins: int = AUC_BINS):
        if bins < 1024:  # the tails must stay within a quarter of the range each
            raise ValueError(f"bins must be >= 1024, got {bins}")
        self.bins = int(bins)
        step = self.bins - 1
        self._k_cut = 2 ** TAIL_BITS  # equal steps from this one to step - this one
        self._cut = np.float32(self._k_cut / step)  # below it (and above 1 - it): float32's spacing
        self._tail = (int(self._cut.view(np.int32)) >> _SHIFT) + 1  # bins of each tail
        self._linear = step - 2 * self._k_cut + 1
        self.layout = f"linear {self.bins}, float32 tails of {TAIL_BITS} bits"
        self.size = 2 * self._tail + self._linear
        self.pos = np.zeros(self.size, dtype=np.int64)
        self.neg = np.zeros(self.size, dtype=np.int64)

    @property
    def values(self) -> np.ndarray:
        return _lowest_probabilities(self.bins)

    def index(self, probs) -> np.ndarray:
        """Each probability's bin (int64, the shape of ``probs``); values outside [0, 1] are clipped."""
        # abs: -0.0 (clip keeps it) has the sign bit set, which the tails' bit patterns would read
        p = np.abs(np.clip(np.asarray(probs, dtype=np.float32), 0.0, 1.0))
        p64 = p.astype(np.float64)
        q = (1.0 - p64).astype(np.float32)  # exact: Sterbenz
        idx = np.rint(p64 * (self.bins - 1)).astype(np.int64) + (self._tail - self._k_cut)
        low, high = p < self._cut, q < self._cut
        idx[low] = p[low].view(np.int32) >> _SHIFT
        idx[high] = self.size - 1 - (q[high].view(np.int32) >> _SHIFT)
        return idx

    def add(self, probs: np.ndarray, truth: np.ndarray) -> None:
        idx = self.index(np.asarray(probs).ravel())
        t = np.asarray(truth).astype(bool).ravel()
        self.pos += np.bincount(idx[t], minlength=self.size)
        self.neg += np.bincount(idx[~t], minlength=self.size)

    def weighted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, truth, weight)``: each used bin's lowest probability, once per class present in
        it, with its count: what scikit-learn's weighted ROC functions take."""
        used_p, used_n = np.flatnonzero(self.pos), np.flatnonzero(self.neg)
        values = self.values[np.concatenate([used_p, used_n])]
        truth = np.concatenate([np.ones(used_p.size, bool), np.zeros(used_n.size, bool)])
        weight = np.concatenate([self.pos[used_p], self.neg[used_n]]).astype(np.float64)
        return values, truth, weight

    def auc(self) -> float:
        values, truth, weight = self.weighted()
        return roc_auc(values, truth, sample_weight=weight)

    def roc(self, max_points: int = ROC_POINTS):
        values, truth, weight = self.weighted()
        return roc_curve(values, truth, max_points=max_points, sample_weight=weight)


@functools.lru_cache(maxsize=8)
def _lowest_probabilities(bins: int) -> np.ndarray:
    """The lowest float32 probability of each bin of :class:`ProbabilityHistogram` ``(bins)``
    (float64): found by bisection over float32's bit patterns, which order [0, 1] as the bins do, so
    exact whatever the rounding at the bins' edges (a bin no float32 falls in gets the next bin's)."""
    h = ProbabilityHistogram(bins)
    want = np.arange(h.size)
    lo = np.zeros(h.size, dtype=np.int64)
    hi = np.full(h.size, int(np.float32(1.0).view(np.int32)), dtype=np.int64)
    while (lo < hi).any():  # smallest pattern whose bin is >= the bin wanted
        mid = (lo + hi) // 2
        reached = h.index(mid.astype(np.int32).view(np.float32)) >= want
        hi, lo = np.where(reached, mid, hi), np.where(reached, lo, mid + 1)
    return lo.astype(np.int32).view(np.float32).astype(np.float64)
