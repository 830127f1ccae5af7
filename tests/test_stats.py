"""lth_jax.stats: Student's t against a table of known values (and SciPy where installed), intervals
of small known samples, paired differences, censoring and the winning-ticket verdict."""

import math

import pytest

from lth_jax import stats

# t_{0.975, df}: the two-sided 95% quantiles of every statistics textbook's table, to 12 digits.
T975 = {1: 12.7062047362, 2: 4.30265272975, 3: 3.18244630528, 4: 2.77644510520,
        5: 2.57058183564, 10: 2.22813885199, 29: 2.04522964213}


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_the_table(df):
    assert stats.t_quantile(0.975, df) == pytest.approx(T975[df], rel=1e-10)
    assert stats.t_quantile(0.025, df) == pytest.approx(-T975[df], rel=1e-10)


def test_t_quantile_extremes_and_symmetry():
    assert stats.t_quantile(0.995, 1) == pytest.approx(63.6567411629, rel=1e-10)
    assert stats.t_quantile(0.5, 3) == 0.0
    # many degrees of freedom: the normal quantile 1.959964
    assert stats.t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError, match="0 < p < 1"):
        stats.t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df > 0"):
        stats.t_quantile(0.9, 0)


@pytest.mark.parametrize("t", [-40.0, -2.0, -0.3, 0.0, 1e-6, 0.7, 3.0, 1e4])
def test_t_cdf_closed_forms(t):
    # df = 1 is the Cauchy distribution; df = 2 has F = 1/2 + t / (2 sqrt(2 + t²))
    assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-13, abs=1e-15)
    assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-13,
                                              abs=1e-15)


def test_t_cdf_infinities():
    assert stats.t_cdf(math.inf, 3) == 1.0 and stats.t_cdf(-math.inf, 3) == 0.0
    assert math.isnan(stats.t_cdf(math.nan, 3))


@pytest.mark.parametrize("x", [1e-8, 0.1, 0.37, 0.5, 0.9, 1 - 1e-9])
def test_betainc_closed_forms(x):
    assert stats.betainc(1, 1, x) == pytest.approx(x, rel=1e-13)
    assert stats.betainc(3.5, 1, x) == pytest.approx(x ** 3.5, rel=1e-12)
    assert stats.betainc(1, 4, x) == pytest.approx(1 - (1 - x) ** 4, rel=1e-12)
    assert stats.betainc(2.5, 7, x) == pytest.approx(1 - stats.betainc(7, 2.5, 1 - x), abs=1e-14)
    assert stats.betainc(2, 3, 0.0) == 0.0 and stats.betainc(2, 3, 1.0) == 1.0
    with pytest.raises(ValueError):
        stats.betainc(0, 1, 0.5)
    with pytest.raises(ValueError):
        stats.betainc(1, 1, 1.5)


def test_against_scipy():
    sp = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    for df in (1, 2, 3, 4, 5, 7, 10, 29, 100, 0.5, 2.5):
        for p in (0.6, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.025, 0.001):
            assert stats.t_quantile(p, df) == pytest.approx(sp.t.ppf(p, df), rel=1e-9)
        for t in (-50, -3, -0.1, 0, 1e-5, 0.5, 2, 10, 1e6):
            assert stats.t_cdf(t, df) == pytest.approx(sp.t.cdf(t, df), abs=1e-12)
    for a in (0.5, 1, 2.5, 10, 50):
        for b in (0.5, 1, 3, 20):
            for x in (1e-6, 0.1, 0.5, 0.9, 0.999999):
                assert stats.betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), abs=1e-13)
    e = stats.mean_ci([0.883, 0.8797, 0.8858])
    ref = sp.ttest_1samp([0.883, 0.8797, 0.8858], 0.0)
    assert (e.t, e.p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)


def test_mean_ci_of_a_known_sample():
    # 1, 2, 3, 4: mean 2.5, sd √(5/3), 95% interval 2.5 ± 3.18244630528 · √(5/3) / 2
    e = stats.mean_ci([1, 2, 3, 4])
    assert (e.n, e.mean, e.confidence) == (4, 2.5, 0.95)
    assert e.sd == pytest.approx(math.sqrt(5 / 3), rel=1e-15)
    assert e.half_width == pytest.approx(2.05426025676052, rel=1e-11)
    assert (e.low, e.high) == pytest.approx((0.44573974323948, 4.55426025676052), rel=1e-11)
    assert e.t == pytest.approx(3.87298334620742, rel=1e-12)  # 2.5 / (√(5/3) / 2)
    assert e.p == pytest.approx(0.0304662916621710, rel=1e-9)
    e90 = stats.mean_ci([1, 2, 3, 4], confidence=0.9)
    assert e90.half_width == pytest.approx(2.35336343480182 * math.sqrt(5 / 3) / 2, rel=1e-10)


def test_two_trials_give_the_twelve_point_seven_standard_errors():
    e = stats.mean_ci([0.88, 0.89])
    assert e.sd == pytest.approx(0.01 / math.sqrt(2), rel=1e-12)
    assert e.half_width == pytest.approx(12.7062047362 * 0.005, rel=1e-10)  # se = 0.01/2
    assert "12.71 standard errors" in stats.few_trials_note(2)
    assert "1 degree of freedom" in stats.few_trials_note(2)
    assert "4.30 standard errors (t with 2 degrees of freedom)" in stats.few_trials_note(3)
    assert stats.few_trials_note(5) is None
    assert "no confidence interval" in stats.few_trials_note(1)


def test_one_and_no_values():
    one = stats.mean_ci([0.7])
    assert (one.n, one.mean, one.sd, one.low, one.high, one.half_width, one.t, one.p) == (
        1, 0.7, None, None, None, None, None, None)
    assert not one.has_interval
    none = stats.mean_ci([])
    assert (none.n, none.mean) == (0, None) and not none.has_interval


def test_equal_values_give_a_zero_width_interval_exactly_at_the_value():
    # the mean of three 0.7s, summed, is a rounding error away from 0.7; the interval must not be
    e = stats.mean_ci([0.7, 0.7, 0.7])
    assert (e.mean, e.sd, e.low, e.high, e.half_width) == (0.7, 0.0, 0.7, 0.7, 0.0)
    assert (e.t, e.p) == (math.inf, 0.0)
    zero = stats.mean_ci([0.0, 0.0])
    assert (zero.t, zero.p) == (0.0, 1.0)


def test_huge_values_do_not_overflow():
    e = stats.mean_ci([1e308, 1.5e308, 1.7e308])
    assert e.mean == pytest.approx(1.4e308, rel=1e-12)
    assert e.sd == pytest.approx(math.sqrt(((0.4 ** 2) + (0.1 ** 2) + (0.3 ** 2)) / 2) * 1e308,
                                 rel=1e-12)
    with pytest.raises(ValueError, match="finite"):
        stats.mean_ci([1.0, math.nan])


def test_paired_difference_uses_the_common_trials():
    d = stats.paired_difference({0: 0.9, 1: 0.8, 2: 0.85, 3: 0.1}, {0: 0.8, 1: 0.75, 2: 0.85})
    # differences 0.1, 0.05, 0: mean 0.05, sd 0.05, 0.05 ± 4.30265272975 · 0.05 / √3
    assert d.n == 3
    assert d.mean == pytest.approx(0.05, rel=1e-12) and d.sd == pytest.approx(0.05, rel=1e-12)
    assert (d.low, d.high) == pytest.approx((-0.0742068855875, 0.1742068855875), rel=1e-10)
    assert d.t == pytest.approx(math.sqrt(3), rel=1e-12)
    assert d.p == pytest.approx(0.225403330758517, rel=1e-9)
    assert stats.paired_difference({0: 1.0}, {1: 1.0}).n == 0


def test_censored():
    assert stats.censored(50_000, 50_000)
    assert not stats.censored(49_900, 50_000)


def _est(low, high, n=3):
    mean = (low + high) / 2
    return stats.Estimate(n, mean, 1.0, low, high, (high - low) / 2)


@pytest.mark.parametrize("acc, stop, kwargs, label", [
    ((-0.004, 0.006), (-900, 50), {}, "winning"),
    ((-0.004, 0.006), (-900, 150), {}, "not shown"),          # stop interval reaches past m = 100
    ((-0.006, 0.006), (-900, 50), {}, "not shown"),           # accuracy interval reaches below −δ
    ((-0.02, -0.006), (-900, 50), {}, "not winning"),         # shown to lose more than δ
    ((-0.004, 0.006), (150, 900), {}, "not winning"),         # shown to stop later
    ((-0.004, 0.006), (-900, 50), {"ticket_censored": True}, "not shown"),
    ((-0.004, 0.006), (150, 900), {"dense_censored": True}, "not shown"),
    ((-0.004, 0.006), (150, 900), {"ticket_censored": True}, "not winning"),  # later: still shown
    ((-0.012, 0.006), (-900, 50), {"accuracy_margin": 0.015}, "winning"),
])
def test_winning_verdict(acc, stop, kwargs, label):
    v = stats.winning_verdict(_est(*acc), _est(*stop), stop_margin=100, **kwargs)
    assert v.label == label


def test_winning_verdict_reasons_and_one_trial():
    v = stats.winning_verdict(_est(-0.006, 0.006), _est(-900, 150), stop_margin=100)
    assert v.reason == ("accuracy interval reaches below −0.5 pp; early-stop interval reaches "
                        "above +100 iterations")
    one = stats.winning_verdict(stats.mean_ci([0.01]), stats.mean_ci([-300]), stop_margin=100)
    assert (one.label, one.reason) == ("no verdict", "1 paired trial: no interval")
