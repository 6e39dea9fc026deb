"""Learning-rate schedule: linear warm-up, then a half-cycle cosine to ``min_lr`` (spec §6).

Updated every optimizer step, as MAE does with fractional epochs: warm-up and total length are
counted in steps (``epochs * steps_per_epoch``), so step ``s`` gets exactly the lr MAE gives at
epoch ``s / steps_per_epoch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def lr_at(
    step: int, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0
) -> float:
    """The lr of optimizer step ``step`` (0-based).

    Warm-up: ``peak * step / warmup`` (0 at step 0, as MAE). Then
    ``min_lr + (peak - min_lr) * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))``,
    which reaches ``min_lr`` at ``step == total_steps`` and stays there after.
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LRSchedule:
    """The schedule of one run (all lengths in optimizer steps)."""

    peak_lr: float
    warmup_steps: int
    total_steps: int
    min_lr: float = 0.0

    def __call__(self, step: int) -> float:
        return lr_at(step, self.peak_lr, self.warmup_steps, self.total_steps, self.min_lr)
