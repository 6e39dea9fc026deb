"""What an evaluation produces: one probe run (:class:`FoldRun`), one model on one task
(:class:`TaskResult`, ``runs[seed][fold]``), and the whole evaluation (:class:`EvaluationResult`).

The probe runner and ``evaluate --mode finetune`` fill them; the report writes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .stats import mean_ci

__all__ = ["FoldRun", "TaskResult", "EvaluationResult"]


@dataclass
class FoldRun:
    """Probe outcome on one test fold for one seed."""

    fold: str  # test split
    valid: str  # validation split
    dropout: float  # selected on validation
    valid_score: float
    best_epoch: int
    epochs: int
    test: dict[str, float]  # all task metrics on the test split


@dataclass
class TaskResult:
    """All probe runs of one model on one task: ``runs[seed_index][fold_index]``."""

    model: str
    task: str
    metrics: tuple[str, ...]
    seeds: list[int]
    runs: list[list[FoldRun]]
    embedding_dim: int
    prediction_type: str = ""
    split_mode: str = ""

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def seed_scores(self, metric: str | None = None) -> list[float]:
        """Per-seed task score: ``metric`` (default primary) averaged over the test folds."""
        metric = metric or self.primary_metric
        return [float(np.mean([r.test[metric] for r in folds])) for folds in self.runs]

    def summary(self, metric: str | None = None) -> tuple[float, float]:
        """``(mean, 95 % CI half-width)`` over seeds."""
        return mean_ci(self.seed_scores(metric))

    @property
    def mean(self) -> float:
        return self.summary()[0]

    @property
    def ci(self) -> float:
        return self.summary()[1]


@dataclass
class EvaluationResult:
    """Everything one evaluation produced; ``results[model][task]``."""

    models: list[str]
    tasks: list[str]
    results: dict[str, dict[str, TaskResult]]
    normalized: dict[str, float]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with every number (per seed and fold too)."""
        out: dict[str, Any] = {
            "models": self.models,
            "tasks": self.tasks,
            "normalized_score": self.normalized,
            "config": self.config,
            "results": {},
        }
        for m in self.models:
            out["results"][m] = {}
            for t in self.tasks:
                r = self.results[m][t]
                mean, ci = r.summary()
                out["results"][m][t] = {
                    "primary_metric": r.primary_metric,
                    "mean": mean,
                    "ci95": ci,
                    "seed_scores": r.seed_scores(),
                    "seeds": r.seeds,
                    "metrics": {
                        k: dict(zip(("mean", "ci95"), r.summary(k), strict=True)) for k in r.metrics
                    },
                    "embedding_dim": r.embedding_dim,
                    "prediction_type": r.prediction_type,
                    "split_mode": r.split_mode,
                    "runs": [[dataclasses.asdict(f) for f in folds] for folds in r.runs],
                }
        return out
