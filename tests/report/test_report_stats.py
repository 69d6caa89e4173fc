"""Statistics against scipy on known inputs."""

import math

import numpy as np
from scipy import stats

from tcnet.report.stats import bootstrap_ci, direction, fold_test, holm, mean_sd, paired_test, rng_for


def test_mean_sd_is_sample_sd():
    assert mean_sd([1.0, 2.0, 4.0]) == (7 / 3, float(np.std([1, 2, 4], ddof=1)))
    m, sd = mean_sd([0.5])
    assert m == 0.5 and math.isnan(sd)
    assert all(math.isnan(x) for x in mean_sd([]))


def test_paired_test_equals_scipy_and_ci_covers_the_true_difference():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.6, 0.9, 200)
    a = b + 0.03 + rng.normal(0, 0.02, 200)  # true mean difference 0.03
    r = paired_test(a, b, 2000, 0.95, rng_for(42, "x"))
    ref = stats.wilcoxon(a - b)
    assert r.n == 200
    assert r.p_value == ref.pvalue and r.wilcoxon_stat == ref.statistic
    assert math.isclose(r.mean_diff, float(np.mean(a - b)))
    assert r.ci_low < 0.03 < r.ci_high and r.ci_low < r.mean_diff < r.ci_high
    # seeded: the same seed and key give the same interval, another key another one
    again = paired_test(a, b, 2000, 0.95, rng_for(42, "x"))
    other = paired_test(a, b, 2000, 0.95, rng_for(42, "y"))
    assert (again.ci_low, again.ci_high) == (r.ci_low, r.ci_high)
    assert (other.ci_low, other.ci_high) != (r.ci_low, r.ci_high)


def test_small_sample_p_value_is_scipy_exact():
    a = np.array([0.9, 0.8, 0.85, 0.7, 0.95, 0.75, 0.6])
    b = np.array([0.8, 0.82, 0.7, 0.65, 0.9, 0.7, 0.58])
    r = paired_test(a, b, 500, 0.9, rng_for(1, "k"))
    assert r.p_value == stats.wilcoxon(a - b).pvalue == stats.wilcoxon(a, b).pvalue


def test_all_zero_differences_are_handled():
    x = np.array([0.7, 0.8, 0.9])
    r = paired_test(x, x.copy(), 100, 0.95, rng_for(0))
    assert (r.mean_diff, r.p_value, r.ci_low, r.ci_high) == (0.0, 1.0, 0.0, 0.0)
    assert "zero" in r.note


def test_bootstrap_ci_is_scipys_bca_with_the_same_generator():
    x = np.random.default_rng(3).normal(1.0, 0.5, 50)
    lo, hi = bootstrap_ci(x, 1000, 0.9, np.random.default_rng(7))
    ref = stats.bootstrap((x,), np.mean, n_resamples=1000, confidence_level=0.9, method="BCa",
                          rng=np.random.default_rng(7))
    assert (lo, hi) == (ref.confidence_interval.low, ref.confidence_interval.high)


def test_bca_covers_where_the_percentile_interval_fell_short():
    """Skewed differences, 8 images (the demo's size): the percentile interval's coverage was ~84 %."""
    rng = np.random.default_rng(11)
    hits = {"BCa": 0, "percentile": 0}
    trials = 300
    for t in range(trials):
        x = rng.lognormal(0.0, 1.0, 8)  # true mean exp(0.5)
        lo, hi = bootstrap_ci(x, 999, 0.95, np.random.default_rng(t))
        hits["BCa"] += lo <= math.exp(0.5) <= hi
        p = stats.bootstrap((x,), np.mean, n_resamples=999, confidence_level=0.95, method="percentile",
                            rng=np.random.default_rng(t)).confidence_interval
        hits["percentile"] += p.low <= math.exp(0.5) <= p.high
    assert hits["BCa"] > hits["percentile"]


def test_where_bca_is_undefined_the_percentile_interval_is_used():
    """A statistic whose resamples are nearly all equal (the minimum of 49 zeros and a one): scipy's
    BCa gives NaN there; the CI is then scipy's percentile interval from the same generator state."""
    x = np.array([0.0] * 49 + [1.0])

    def smallest(idx, axis=-1):
        return x[idx].min(axis=-1)

    bca = stats.bootstrap((np.arange(50),), smallest, n_resamples=500, confidence_level=0.95, method="BCa",
                          vectorized=True, rng=np.random.default_rng(1)).confidence_interval
    assert np.isnan([bca.low, bca.high]).all()
    ref = stats.bootstrap((np.arange(50),), smallest, n_resamples=500, confidence_level=0.95,
                          method="percentile", vectorized=True, rng=np.random.default_rng(1)).confidence_interval
    from tcnet.report.stats import bootstrap_interval, bootstrap_mean_interval

    assert bootstrap_interval(smallest, 50, 500, 0.95, np.random.default_rng(1))[:2] == (ref.low, ref.high)

    assert bootstrap_interval(smallest, 50, 500, 0.95, np.random.default_rng(1)) == (ref.low, ref.high, "percentile")
    assert bootstrap_mean_interval(x, 500, 0.95, np.random.default_rng(1))[2] == "BCa"


def test_a_percentile_fallback_is_noted_where_the_captions_say_bca(monkeypatch):
    from tcnet.report import stats as st

    a = np.array([0.9, 0.8, 0.85, 0.7, 0.95, 0.75, 0.6, 0.52, 0.51, 0.5])
    b = a - np.linspace(0.01, 0.1, 10)
    assert st.PERCENTILE_NOTE not in paired_test(a, b, 200, 0.95, rng_for(0, "z")).note
    real = st.bootstrap_mean_interval
    monkeypatch.setattr(st, "bootstrap_mean_interval", lambda *args: (*real(*args)[:2], "percentile"))
    assert st.PERCENTILE_NOTE in paired_test(a, b, 200, 0.95, rng_for(0, "z")).note


def test_the_signed_rank_note_counts_the_non_zero_differences():
    a = np.array([0.9, 0.8, 0.85, 0.7, 0.95, 0.75, 0.6, 0.5, 0.5, 0.5])
    b = a.copy()
    b[:4] -= 0.05  # 4 non-zero differences of 10
    r = paired_test(a, b, 200, 0.95, rng_for(0, "z"))
    assert r.n == 10 and r.n_nonzero == 4 and "only 4 of 10 differences are non-zero" in r.note
    assert r.p_value == stats.wilcoxon(a - b).pvalue


def test_fold_test_is_scipys_one_sample_t():
    d = [5.55, 2.95, 2.11]
    f = fold_test(d, 0.95)
    ref = stats.ttest_1samp(d, 0.0)
    ci = ref.confidence_interval(0.95)
    assert (f.n, f.p_value, f.t_stat) == (3, ref.pvalue, ref.statistic)
    assert (f.ci_low, f.ci_high) == (ci.low, ci.high) and f.ci_low < 0 < f.ci_high  # 3 folds: wide
    assert math.isnan(fold_test([1.0], 0.95).p_value) and "fewer than 2" in fold_test([1.0], 0.95).note
    same = fold_test([2.0, 2.0, 2.0], 0.95)  # no spread: no interval, so no claim resolves on it
    assert same.mean_diff == 2.0 and math.isnan(same.ci_low) and direction(same.ci_low, same.ci_high) == 0


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    out = holm([0.2, float("nan"), 0.9])
    assert out[0] == 0.4 and math.isnan(out[1]) and out[2] == 0.9


def test_direction_reads_a_ci():
    assert (direction(0.1, 2.0), direction(-2.0, -0.1), direction(-1.0, 1.0), direction(math.nan, math.nan)) == (1, -1, 0, 0)


def test_the_pooled_auc_of_summed_histograms_is_the_evaluate_stages():
    from tcnet.metrics import ProbabilityHistogram, roc_auc
    from tcnet.report.pairing import pooled_score

    rng = np.random.default_rng(5)
    probs = [rng.beta(2, 5, 3000), rng.beta(2, 3, 2000)]
    truth = [rng.random(3000) < p for p in (probs[0] * 0.8,)] + [rng.random(2000) < probs[1]]
    hists = []
    for p, t in zip(probs, truth):
        h = ProbabilityHistogram(1024)
        h.add(p, t)
        hists.append(h)
    pos = np.stack([h.pos for h in hists])
    neg = np.stack([h.neg for h in hists])
    whole = ProbabilityHistogram(1024)
    for p, t in zip(probs, truth):
        whole.add(p, t)
    got = float(pooled_score("AUC", np.zeros((2, 4)).sum(0), pos.sum(0), neg.sum(0)))
    assert math.isclose(got, whole.auc(), rel_tol=1e-12)
    exact = roc_auc(np.concatenate(probs), np.concatenate(truth))
    assert abs(got - exact) < 1e-3  # 1024 bins: ties inside a bin only
    counts = np.array([[5, 1, 2, 10], [3, 2, 1, 20]])
    assert float(pooled_score("SE", counts.sum(0), pos.sum(0), neg.sum(0))) == 8 / 11
