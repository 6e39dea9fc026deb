"""What a fine-tuning job produces: one tested fold (:class:`FoldResult`) and the whole job
(:class:`FinetuneResult`, the mean over test folds). The trainer fills them; the report writes them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import FinetuneConfig
from .data import FinetuneTask

__all__ = ["BEST_DIR", "FoldResult", "FinetuneResult"]

BEST_DIR = "best"  # a fold's best-validation classifier: RUN/best


@dataclass
class FoldResult:
    """The best-validation classifier of one fold, tested."""

    fold: str  # the test split
    valid: str
    run_dir: Path
    finished: bool
    best_step: int | None = None
    best_valid: float | None = None
    test: dict[str, float] = field(default_factory=dict)  # every report metric on the test split
    per_class_ap: list[float] = field(default_factory=list)
    confusion: list[list[int]] | None = None  # multiclass only
    n_test: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # unreadable test / validation files

    @property
    def model_dir(self) -> Path:
        return self.run_dir / BEST_DIR

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["run_dir"] = str(self.run_dir)
        d["model_dir"] = str(self.model_dir)
        return d


@dataclass
class FinetuneResult:
    """All folds of one fine-tuning job; ``mean[metric]`` is the mean over test folds."""

    task: FinetuneTask
    config: FinetuneConfig
    folds: list[FoldResult]
    out_dir: Path
    planned: int | None = None  # folds asked for; fewer ran when a stop signal ended the job

    @property
    def finished(self) -> bool:
        complete = self.planned is None or len(self.folds) == self.planned
        return complete and all(f.finished for f in self.folds)

    @property
    def mean(self) -> dict[str, float]:
        agg: dict[str, list[float]] = defaultdict(list)
        for f in self.folds:
            for k, v in f.test.items():
                agg[k].append(v)
        return {
            k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else math.nan
            for k, v in agg.items()
        }

    @property
    def model_dir(self) -> Path:
        """The classifier to ship: the best-validation model of the (first) fold."""
        return self.folds[0].model_dir
