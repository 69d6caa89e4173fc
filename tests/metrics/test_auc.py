"""AUC and ROC points (scikit-learn underneath): valid masks, one-class truth, thinning, histograms."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tcnet.metrics import ProbabilityHistogram, downsample_curve, roc_auc, roc_curve


def _case(seed=0, shape=(40, 50)):
    rng = np.random.default_rng(seed)
    t = rng.random(shape) < 0.3
    p = np.clip(0.35 * t + rng.random(shape) * 0.65, 0, 1)
    v = rng.random(shape) < 0.8
    return p, t, v


def test_roc_auc_by_hand_and_against_sklearn():
    # 2 positives (0.9, 0.4), 2 negatives (0.6, 0.1): 3 of 4 pairs ordered right -> 0.75
    assert roc_auc(np.array([0.9, 0.4, 0.6, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.75)
    p, t, v = _case()
    assert roc_auc(p, t) == pytest.approx(roc_auc_score(t.ravel(), p.ravel()))
    assert roc_auc(p, t, v) == pytest.approx(roc_auc_score(t[v], p[v]))


def test_one_class_truth_is_nan():
    p = np.random.default_rng(0).random((5, 5))
    assert math.isnan(roc_auc(p, np.zeros((5, 5), bool)))
    assert math.isnan(roc_auc(p, np.ones((5, 5), bool)))
    fpr, tpr = roc_curve(p, np.zeros((5, 5), bool))
    assert fpr.size == tpr.size == 0


def test_roc_curve_points():
    p, t, v = _case(1, (200, 200))
    fpr, tpr = roc_curve(p, t, v, max_points=200)
    assert 2 <= fpr.size <= 200
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # the trapezoid area of the thinned curve is still close to the AUC
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(p, t, v), abs=2e-3)


def test_downsample_keeps_real_points_and_ends():
    x = np.linspace(0, 1, 1000) ** 3
    y = np.sqrt(np.linspace(0, 1, 1000))
    dx, dy = downsample_curve(x, y, 50)
    assert dx.size <= 50 and dx[0] == x[0] and dx[-1] == x[-1]
    assert set(zip(dx, dy)) <= set(zip(x, y))
    assert downsample_curve(x[:10], y[:10], 50)[0].size == 10


def test_histogram_auc_is_exact_for_8bit_probs_and_close_otherwise():
    p, t, v = _case(2, (60, 70))
    p8 = np.round(p * 255) / 255
    h = ProbabilityHistogram()
    h.add(p8[v], t[v])
    assert h.auc() == pytest.approx(roc_auc_score(t[v], p8[v]), abs=1e-12)
    h = ProbabilityHistogram()
    h.add(p[v], t[v])
    assert h.auc() == pytest.approx(roc_auc_score(t[v], p[v]), abs=1e-4)
    assert math.isnan(ProbabilityHistogram().auc())


def test_histogram_resolves_probabilities_near_0_and_1():
    """A trained model puts most pixels within 1e-5 of 0 or 1: equal 1/65535 steps tied them all
    (pooled AUC 0.5 where it is 1.0, and 7e-3 low on confident simulated logits)."""
    from tcnet.metrics import MetricAccumulator

    tiny = np.array([[5e-6, 5e-6, 1e-6, 1e-6]], np.float32)
    truth = np.array([[1, 1, 0, 0]], bool)
    for prob, t in ((tiny, truth), (1 - tiny, ~truth)):
        acc = MetricAccumulator(with_auc=True)
        acc.update("x", prob, t)
        assert acc.pooled()["AUC"] == 1.0
    rng = np.random.default_rng(2)
    n = 100_000
    for bg, fg in (((-10, 4), (2, 5)), ((-14, 3), (-4, 6)), ((-20, 5), (10, 8)), ((-1, 0.5), (0.5, 0.5))):
        t = rng.random(n) < 0.12
        p = (1 / (1 + np.exp(-np.where(t, rng.normal(*fg, n), rng.normal(*bg, n))))).astype(np.float32)
        exact = roc_auc_score(t, p.astype(np.float64))
        for bins in (65536, 16384):
            h = ProbabilityHistogram(bins)
            h.add(p, t)
            assert abs(h.auc() - exact) < 1e-6, (bg, fg, bins)


def test_histogram_bins_keep_order_and_16_bit_probabilities_apart():
    h = ProbabilityHistogram()
    every = np.arange(0, np.float32(1).view(np.int32) + 1, 4099, dtype=np.int32).view(np.float32)
    p = np.sort(np.concatenate([every, (1 - np.arange(600) * 2.0**-24).astype(np.float32), [0, 1]]))
    idx = h.index(p)
    assert idx[0] == 0 and idx[-1] == h.size - 1 and (np.diff(idx) >= 0).all()
    assert (h.values[idx] <= p).all() and (np.diff(h.values) >= 0).all()  # each bin's lowest probability
    # values[b] is the lowest float32 of bin b: the one below it falls in an earlier bin (ROC thresholds
    # "p >= value" then take exactly the bins from b on)
    v = h.values.astype(np.float32)
    own = h.index(v) == np.arange(h.size)
    below = np.nextafter(v[own & (v > 0)], np.float32(0))
    assert (h.index(below) < np.flatnonzero(own & (v > 0))).all()
    lo = np.float32(1 - 2**-10)  # a high-tail edge that is itself a float32
    h2 = ProbabilityHistogram()
    h2.add(np.array([np.nextafter(lo, np.float32(1)), lo, -0.0], np.float32), np.array([1, 0, 0], bool))  # -0.0: bin 0
    assert h2.auc() == 1.0 and h2.neg[0] == 1
    grid = (np.arange(65536) / 65535).astype(np.float32)  # 16-bit probability PNGs: one bin each, so exact
    assert np.unique(h.index(grid)).size == 65536
    with pytest.raises(ValueError, match="bins must be >= 1024"):
        ProbabilityHistogram(256)
