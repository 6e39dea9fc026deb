"""Scene-task metrics exactly as hear-eval-kit 2021.1.3 computes them (``heareval/score.py``),
numpy only.

Every metric takes ``scores (n, C)`` (class probabilities: softmax for multiclass, sigmoid for
multilabel) and ``targets (n, C)`` multi-hot, and returns a float where higher is better. The kit
calls scikit-learn for the last three; the notes say which scikit-learn behaviour is mirrored
(checked against scikit-learn 1.9.1, the version the kit's runner installs today; see
docs/EVALUATION.md for the 2021 versions).

- ``top1_acc``: ``argmax(scores) == argmax(target)`` row by row (``Top1Accuracy``); ``argmax``
  takes the first of tied maxima, and a multilabel row counts only its first label.
- ``pitch_acc``: the kit's ``partial(Top1Accuracy, name="pitch_acc")``: the same function.
- ``chroma_acc``: ``argmax % 12`` compared (``ChromaAccuracy``; assumes consecutive semitones).
- ``mAP``: ``average_precision_score(targets, scores, average="macro")``: per class
  ``sum_k (R_k - R_{k-1}) P_k`` over distinct score thresholds (tied scores form one step), then
  the plain mean over *all* classes; a class without a positive in the split scores 0 (what
  scikit-learn >= 1.1 returns, with a warning).
- ``aucroc``: ``roc_auc_score(average="macro")``: mean ROC AUC (ties count one half); NaN as soon
  as one class lacks positives or negatives (scikit-learn returns NaN; the kit maps the older
  ``ValueError`` to NaN too).
- ``d_prime``: ``mean(sqrt(2) * norm.ppf(auc_c))`` over classes: an AUC of 1 gives ``inf``, a
  class without both kinds of example NaN (no clipping).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

__all__ = [
    "METRICS",
    "PERCENT_METRICS",
    "display_scale",
    "format_metric",
    "top1_acc",
    "chroma_acc",
    "average_precision",
    "mean_average_precision",
    "roc_auc",
    "aucroc",
    "d_prime",
    "compute_metrics",
]

Metric = Callable[[np.ndarray, np.ndarray], float]


def _check(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (n, C)")
    if scores.shape[0] == 0:
        raise ValueError("no examples to score")
    return scores, targets > 0


def top1_acc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of rows with ``argmax(scores) == argmax(target)`` (first index on ties)."""
    scores, pos = _check(scores, targets)
    return float(np.mean(scores.argmax(axis=1) == pos.argmax(axis=1)))


def chroma_acc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy ignoring octave errors: class indices compared modulo 12."""
    scores, pos = _check(scores, targets)
    return float(np.mean(scores.argmax(axis=1) % 12 == pos.argmax(axis=1) % 12))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one class: ``sum_k (R_k - R_{k-1}) P_k`` over distinct score thresholds, descending.

    ``scores``, ``positive``: ``(n,)``. 0 when there is no positive (scikit-learn >= 1.1).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive) > 0
    if not y.any():
        return 0.0
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each tied block
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mean of :func:`average_precision` over all classes (absent ones count 0)."""
    scores, pos = _check(scores, targets)
    return float(
        np.mean([average_precision(scores[:, c], pos[:, c]) for c in range(scores.shape[1])])
    )


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their mean rank, ``(n,)``."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x), dtype=np.float64)
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0  # mean of ranks a+1..b
    return ranks


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of one class (Mann-Whitney U / (P N)); NaN without both positives and negatives."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive) > 0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = _average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _per_class_auc(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    """ROC AUC of every class, NaN where a class lacks positives or negatives."""
    scores, pos = _check(scores, targets)
    return [roc_auc(scores[:, c], pos[:, c]) for c in range(scores.shape[1])]


def aucroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mean ROC AUC; NaN when any class is undefined (as the kit)."""
    return float(np.mean(_per_class_auc(scores, targets)))


def _probit(p: float) -> float:
    """``norm.ppf``: -inf / inf at 0 / 1, NaN for NaN."""
    if math.isnan(p):
        return math.nan
    if p <= 0.0 or p >= 1.0:
        return -math.inf if p <= 0.0 else math.inf
    return NormalDist().inv_cdf(p)


def d_prime(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mean of ``sqrt(2) * Phi^-1(AUC)``, unclipped: inf for a perfect class, NaN if
    undefined."""
    return float(np.mean([math.sqrt(2.0) * _probit(a) for a in _per_class_auc(scores, targets)]))


METRICS: dict[str, Metric] = {
    "top1_acc": top1_acc,
    "pitch_acc": top1_acc,
    "chroma_acc": chroma_acc,
    "mAP": mean_average_precision,
    "aucroc": aucroc,
    "d_prime": d_prime,
}

# Metrics that are fractions in [0, 1]; reports show them in percent.
PERCENT_METRICS = frozenset({"top1_acc", "pitch_acc", "chroma_acc", "mAP", "aucroc"})


def display_scale(metric: str) -> float:
    """What reports multiply ``metric`` by: 100 for a fraction shown in percent, else 1."""
    return 100.0 if metric in PERCENT_METRICS else 1.0


def format_metric(value: float | None, metric: str) -> str:
    """A score as every report shows it: percent with 1 decimal (``0.853`` -> ``"85.3"``), other
    metrics (``d_prime``) with 3 decimals; ``"n/a"`` for a missing or NaN value."""
    if value is None or math.isnan(value):
        return "n/a"
    digits = 1 if metric in PERCENT_METRICS else 3
    return f"{value * display_scale(metric):.{digits}f}"


def compute_metrics(
    names: Sequence[str], scores: np.ndarray, targets: np.ndarray
) -> dict[str, float]:
    """``{name: value}`` for each metric name (see :data:`METRICS`)."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {n: METRICS[n](scores, targets) for n in names}
