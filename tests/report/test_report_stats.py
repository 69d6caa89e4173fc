"""Statistics against scipy on known inputs."""

import math

import numpy as np
from scipy import stats

from tcnet.report.stats import bootstrap_ci, mean_sd, paired_test, rng_for


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


def test_bootstrap_ci_matches_scipy_with_the_same_generator():
    x = np.random.default_rng(3).normal(1.0, 0.5, 50)
    lo, hi = bootstrap_ci(x, 1000, 0.9, np.random.default_rng(7))
    ref = stats.bootstrap((x,), np.mean, n_resamples=1000, confidence_level=0.9, method="percentile",
                          rng=np.random.default_rng(7))
    assert (lo, hi) == (ref.confidence_interval.low, ref.confidence_interval.high)
