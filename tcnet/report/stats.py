"""Statistics for the comparison tables: spread over folds and paired tests on the same images.

- :func:`mean_sd`: mean and sample standard deviation (ddof = 1) over folds; sd is NaN for one fold.
- :func:`paired_test`: for paired per-image scores ``a`` (TCNet) and ``b`` (another model) on the
  same images: the mean difference ``a - b``, the Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``, two-sided; all-zero differences give p = 1 without calling scipy, which
  would warn and divide by zero) and a seeded percentile-bootstrap CI of the mean difference
  (``scipy.stats.bootstrap``).
- :func:`bootstrap_ci`: the same CI for any sample's mean (error bars of single-fold bar charts).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from scipy import stats


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample sd (ddof=1) of the finite ``values``; (NaN, NaN) when none, sd NaN for one."""
    a = np.asarray(list(values), dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan


def rng_for(seed: int, *key: str) -> np.random.Generator:
    """A generator that depends on ``seed`` and ``key`` only, never on the order of calls."""
    return np.random.default_rng([int(seed), zlib.crc32("/".join(key).encode())])


def bootstrap_ci(
    x, n_resamples: int, confidence: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``mean(x)``; a constant sample gives (x0, x0); fewer than 2 values NaN."""
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        return math.nan, math.nan
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    res = stats.bootstrap(
        (x,), np.mean, n_resamples=int(n_resamples), confidence_level=confidence,
        method="percentile", vectorized=True, rng=rng,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class PairedResult:
    n: int
    mean_diff: float  # mean of a - b
    ci_low: float
    ci_high: float
    wilcoxon_stat: float
    p_value: float
    note: str = ""


def paired_test(a, b, n_resamples: int, confidence: float, rng: np.random.Generator) -> PairedResult:
    """Paired comparison of per-image scores ``a`` and ``b`` (same images, same order)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same images: got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    if d.size == 0:
        return PairedResult(0, math.nan, math.nan, math.nan, math.nan, math.nan, "no paired images")
    lo, hi = bootstrap_ci(d, n_resamples, confidence, rng)
    if not np.any(d):
        return PairedResult(d.size, 0.0, lo, hi, 0.0, 1.0, "all differences are zero")
    note = "" if d.size >= 6 else f"only {d.size} paired images: the test has little power"
    w = stats.wilcoxon(d)
    return PairedResult(d.size, float(d.mean()), lo, hi, float(w.statistic), float(w.pvalue), note)
