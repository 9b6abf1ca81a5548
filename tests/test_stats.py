"""Paired statistics against values computed by hand (closed forms, counted sign patterns)."""

import math

import pytest

from gapt_ds.stats import mean_ci, paired, sign_flip_p

T975_DF3 = 3.182446305284263  # Student t quantile 0.975, 3 degrees of freedom (tables)


def t3_two_sided_p(t: float) -> float:
    """Closed-form Student t CDF for 3 degrees of freedom: F(t) = 1/2 + (x/(1+x²) + atan x)/π, x = t/√3."""
    x = abs(t) / math.sqrt(3)
    return 2 * (0.5 - (x / (1 + x * x) + math.atan(x)) / math.pi)


def test_paired_mean_ci_and_p_values_by_hand():
    base = [10.0, 20.0, 30.0, 40.0]
    arm = [11.0, 22.0, 33.0, 44.0]  # differences 1, 2, 3, 4
    r = paired(base, arm)
    sd = math.sqrt(((1.5**2 + 0.5**2) * 2) / 3)  # sample sd of 1..4
    half = T975_DF3 * sd / 2  # / sqrt(4)
    assert (r.n, r.mean, r.base_mean, r.arm_mean) == (4, 2.5, 25.0, 27.5)
    assert r.ci_low == pytest.approx(2.5 - half, rel=1e-9) and r.ci_high == pytest.approx(2.5 + half, rel=1e-9)
    assert r.rel == pytest.approx(0.1)
    assert r.p_t == pytest.approx(t3_two_sided_p(2.5 / (sd / 2)), rel=1e-9)
    assert r.p_perm == pytest.approx(2 / 16)  # only "all +" and "all -" reach |mean| 2.5


def test_sign_flip_counts_patterns():
    # diffs 1, 1, 2, 4 (sum 8): |sum| >= 8 only for all + and its mirror image: 2 of 16 patterns
    assert sign_flip_p([1, 1, 2, 4]) == pytest.approx(2 / 16)
    # diffs 1, -1, 2, 4 (sum 6): s4 = + and s1 - s2 + 2 s3 >= 2: (s3 = +) with (s1, s2) != (-, +): 3, x2 mirror
    assert sign_flip_p([1, -1, 2, 4]) == pytest.approx(6 / 16)
    assert sign_flip_p([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="too large"):
        sign_flip_p([1.0] * 21)


def test_degenerate_and_bad_inputs():
    r = paired([1.0, 2.0], [2.0, 3.0])  # every seed moved by exactly +1: no spread
    assert r.mean == 1.0 and r.ci_low == r.ci_high == 1.0 and r.p_t == 0.0 and r.p_perm == pytest.approx(0.5)
    one = paired([1.0], [3.0])
    assert one.mean == 2.0 and math.isnan(one.ci_low) and math.isnan(one.p_t)
    with pytest.raises(ValueError, match="equal lengths"):
        paired([1.0], [1.0, 2.0])
    m, h = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])  # sd = sqrt(14/3); t(0.975, 6) = 2.446911851
    assert m == 4.0 and h == pytest.approx(2.446911851 * math.sqrt(14 / 3) / math.sqrt(7), rel=1e-8)
