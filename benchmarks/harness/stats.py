"""Confidence intervals over seeds: Student's t-interval of a mean, and of paired differences.

A seed fixes everything random in a run (adapter initialisation, data order), and every method runs on the same
seeds, so two methods compare best through their per-seed differences: the spread shared by both (an easy or a
hard seed) cancels. No scipy: the t quantiles are tabulated (two-sided 95%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# t_{0.975, df} for df = 1..30; beyond, the Cornish-Fisher expansion around the normal quantile (error < 1e-3).
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"A t-interval needs at least 2 values (df >= 1), got df={df}.")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def t_interval(values: Sequence[float]) -> Interval:
    """Mean and 95% t-interval of ``values`` (one per seed). One value gives no interval: (-inf, inf)."""
    n = len(values)
    if n == 0:
        raise ValueError("No values to average.")
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_interval(a: dict, b: dict) -> Interval:
    """95% t-interval of a - b over the seeds both have (``{seed: value}`` each)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("The two methods share no seed.")
    return t_interval([a[s] - b[s] for s in seeds])
