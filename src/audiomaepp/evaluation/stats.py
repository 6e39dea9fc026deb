"""Seed statistics and the aggregate score (spec §7), standard library + numpy (no scipy).

- ``mean_ci``: mean over seeds and the 95 % half-width ``t(0.975, n-1) * std(ddof=1) / sqrt(n)``.
- ``t_quantile``: Student-t quantile by inverting the CDF, which is written with the regularized
  incomplete beta function (continued fraction, modified Lentz). df 1 and 2 use closed forms.
- ``normalized_scores``: ``s(m) = 100/|T| * sum_t (x_t(m) - min_t) / (max_t - min_t)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

__all__ = [
    "betainc",
    "student_t_cdf",
    "t_quantile",
    "mean_ci",
    "welch_p",
    "FIDELITY_P_MIN",
    "FIDELITY_MEAN_DIFF_MAX",
    "normalized_scores",
]

_TINY = 1e-300
_EPS = 1e-15


def _beta_cf(a: float, b: float, x: float, max_iter: int = 500) -> float:
    """Continued fraction ``1 + d1/(1 + d2/(1 + ...))`` of the incomplete beta (modified Lentz)."""
    f = c = 1.0
    d = 0.0
    for i in range(1, 2 * max_iter + 1):
        m = i // 2
        if i % 2:  # odd terms d_{2m+1}
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:  # even terms d_{2m}
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + num / c
        c = c if abs(c) > _TINY else _TINY
        f *= c * d
        if abs(c * d - 1.0) < _EPS:
            return f
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``."""
    if not (a > 0 and b > 0) or not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below this point
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = (
        a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    )
    return math.exp(log_front) / a / _beta_cf(a, b, x)


def student_t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of :func:`student_t_cdf`: the ``t`` with ``P(T <= t) = p`` (t(0.975, 9) = 2.262)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    if math.isinf(df):
        return NormalDist().inv_cdf(p)
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:  # bracket, then bisect: monotone and safe
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` with half-width ``t((1+c)/2, n-1) * std(ddof=1) / sqrt(n)``.

    With fewer than two values the half-width is NaN (undefined).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci of no values")
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan
    t = t_quantile(0.5 + confidence / 2.0, x.size - 1)
    return mean, float(t * x.std(ddof=1) / math.sqrt(x.size))


# The fidelity criterion against hear-eval-kit (docs/EVALUATION.md): every (embedder, task) cell's
# Welch p on the per-seed scores at least FIDELITY_P_MIN, and the mean |difference| of the cells'
# means at most FIDELITY_MEAN_DIFF_MAX (score units: 0.015 = 1.5 points).
FIDELITY_P_MIN, FIDELITY_MEAN_DIFF_MAX = 0.01, 0.015


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) that ``a`` and ``b`` share a mean.

    Two samples without spread: 1 if their means are equal, else 0."""
    x, y = (np.asarray(v, dtype=np.float64) for v in (a, b))
    if x.size < 2 or y.size < 2:
        raise ValueError("welch_p needs at least two values per sample")
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    diff = float(x.mean() - y.mean())
    if va + vb == 0:
        return 1.0 if diff == 0 else 0.0
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    return float(2.0 * (1.0 - student_t_cdf(abs(diff) / math.sqrt(va + vb), df)))


def normalized_scores(
    table: Mapping[str, Mapping[str, float]], tasks: Sequence[str] | None = None
) -> dict[str, float]:
    """Aggregate score per model: ``100/|T| * sum_t (x_t(m) - min_t) / (max_t - min_t)``.

    ``table[model][task]`` holds each model's task score (higher is better); ``min_t`` and
    ``max_t`` are over all models in ``table``. When every model has the same score on a task
    (``max_t == min_t``, always the case with a single model) the task counts 1 for everyone,
    i.e. all models sit at the best value; this keeps ``s`` in [0, 100], and because it shifts all
    models by the same amount it never changes their order. NaN scores propagate to NaN.
    """
    models = list(table)
    if not models:
        return {}
    tasks = list(tasks) if tasks is not None else list(table[models[0]])
    if not tasks:
        raise ValueError("normalized_scores needs at least one task")
    total = {m: 0.0 for m in models}
    for t in tasks:
        xs = np.array([table[m][t] for m in models], dtype=np.float64)
        finite = xs[~np.isnan(xs)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (math.nan, math.nan)
        for m, x in zip(models, xs, strict=True):
            total[m] += 1.0 if hi == lo and not math.isnan(x) else (x - lo) / (hi - lo)
    return {m: 100.0 * total[m] / len(tasks) for m in models}
