"""Scene-task metrics, numpy only (hear-eval-kit's names and definitions, no scikit-learn).

Every metric takes ``scores (n, C)`` (class probabilities: softmax for multiclass, sigmoid for
multilabel) and ``targets (n, C)`` multi-hot, and returns a float where higher is better.

- ``top1_acc``: the arg-max class is a true label. For one-hot targets this is hear-eval-kit's
  ``argmax(pred) == argmax(target)``; for multilabel rows it counts a hit on any true label.
- ``pitch_acc``: on scene tasks (NSynth pitch) hear-eval-kit scores it as plain top-1 accuracy
  over the pitch classes, so it is the same function under another name.
- ``chroma_acc``: top-1 accuracy after mapping class *indices* modulo 12 (hear-eval-kit's
  definition; it assumes the vocabulary lists consecutive semitones).
- ``mAP``: mean over classes of average precision (scikit-learn's step-wise definition, ties
  handled by distinct thresholds). Classes without a positive in the evaluated set are skipped
  (their AP is undefined); NaN if no class has a positive.
- ``aucroc``: mean over classes of ROC AUC (tie-corrected rank statistic); ``d_prime``: mean over
  classes of ``sqrt(2) * Phi^-1(AUC)``. Both skip classes lacking positives or negatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

__all__ = [
    "METRICS",
    "PERCENT_METRICS",
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
    """Fraction of rows whose highest-scoring class is one of its labels."""
    scores, pos = _check(scores, targets)
    pred = scores.argmax(axis=1)
    return float(pos[np.arange(len(pred)), pred].mean())


def chroma_acc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy ignoring octave errors: class indices compared modulo 12."""
    scores, pos = _check(scores, targets)
    return float(np.mean(scores.argmax(axis=1) % 12 == pos.argmax(axis=1) % 12))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one class: ``sum_k (R_k - R_{k-1}) P_k`` over distinct score thresholds, descending.

    ``scores``, ``positive``: ``(n,)``. NaN when there is no positive.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive) > 0
    if not y.any():
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each tied block
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mean of :func:`average_precision` over classes with at least one positive."""
    scores, pos = _check(scores, targets)
    aps = [average_precision(scores[:, c], pos[:, c]) for c in range(scores.shape[1]) if pos[:, c].any()]
    return float(np.mean(aps)) if aps else math.nan


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
    scores, pos = _check(scores, targets)
    aucs = [roc_auc(scores[:, c], pos[:, c]) for c in range(scores.shape[1])]
    return [a for a in aucs if not math.isnan(a)]


def aucroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mean ROC AUC over classes that have positives and negatives."""
    aucs = _per_class_auc(scores, targets)
    return float(np.mean(aucs)) if aucs else math.nan


def d_prime(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mean of ``sqrt(2) * Phi^-1(AUC)``; AUC is clipped to [1e-6, 1 - 1e-6] to stay finite."""
    aucs = _per_class_auc(scores, targets)
    if not aucs:
        return math.nan
    inv = NormalDist().inv_cdf
    return float(np.mean([math.sqrt(2.0) * inv(min(max(a, 1e-6), 1 - 1e-6)) for a in aucs]))


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


def compute_metrics(
    names: Sequence[str], scores: np.ndarray, targets: np.ndarray
) -> dict[str, float]:
    """``{name: value}`` for each metric name (see :data:`METRICS`)."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {n: METRICS[n](scores, targets) for n in names}
