"""Paired statistics for seed-matched comparisons (an arm against the baseline, same seeds).

With the same seed every arm starts from the same initialisation and reads the same data order, so the
per-seed difference d_s = x_arm(s) - x_base(s) removes the seed-to-seed variance both arms share.

- ``mean`` and the 95% confidence interval use Student's t with n-1 degrees of freedom
  (mean ± t_{0.975, n-1} · sd/√n);
- ``p_t`` is the two-sided paired t-test (``scipy.stats.ttest_rel``, equivalently a one-sample t-test of d);
- ``p_perm`` is the exact two-sided sign-flip permutation test: the share of the 2^n sign patterns of d
  whose |mean| is at least the observed |mean|. It assumes only that d is symmetric about 0 under the
  null, and with n seeds it can never be below 2/2^n (n = 5: 0.0625), which is why both are reported.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Paired:
    n: int
    base_mean: float
    arm_mean: float
    mean: float  # mean of the per-seed differences arm - base
    ci_low: float
    ci_high: float
    rel: float  # mean difference relative to |base_mean| (nan when base_mean is 0)
    p_t: float
    p_perm: float

    def as_dict(self) -> dict:
        return asdict(self)


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided sign-flip permutation p-value of the mean of ``diffs`` (n <= 20)."""
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n == 0:
        return math.nan
    if n > 20:
        raise ValueError(f"exact sign-flip test over 2^{n} patterns is too large; use at most 20 seeds")
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    means = np.abs(signs @ d) / n
    observed = abs(d.mean())
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def paired(base: Sequence[float], arm: Sequence[float]) -> Paired:
    """Paired comparison of ``arm`` against ``base``: element i of both comes from the same seed."""
    from scipy import stats

    if len(base) != len(arm):
        raise ValueError(f"paired samples need equal lengths, got {len(base)} and {len(arm)}")
    b, a = np.asarray(base, dtype=np.float64), np.asarray(arm, dtype=np.float64)
    d = a - b
    n = len(d)
    if n == 0:
        raise ValueError("paired statistics need at least one seed present in both arms")
    mean = float(d.mean())
    base_mean = float(b.mean())
    rel = mean / abs(base_mean) if base_mean != 0 else math.nan
    if n < 2:
        return Paired(n, base_mean, float(a.mean()), mean, math.nan, math.nan, rel, math.nan, math.nan)
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    if sd == 0.0:  # every seed moved by the same amount: t is infinite (or undefined when that amount is 0)
        p_t = 1.0 if mean == 0.0 else 0.0
    else:
        p_t = float(stats.ttest_rel(a, b).pvalue)
    return Paired(n, base_mean, float(a.mean()), mean, mean - half, mean + half, rel, p_t, sign_flip_p(d))


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t confidence interval) of independent values; half-width nan if n < 2."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
