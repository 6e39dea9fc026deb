"""Training-time augmentation of standardised log-mel crops: SpecAugment masks and mixup.

Both take an explicit ``numpy.random.Generator`` (seeded per sample from ``(seed, epoch, rank,
position)`` by the dataset), so a resumed run draws exactly what the uninterrupted run drew.
Masked values are set to 0, the mean of a standardised log-mel.
"""

from __future__ import annotations

import numpy as np
import torch


def spec_augment(
    lms: torch.Tensor, rng: np.random.Generator, freq_mask: int, time_mask: int
) -> torch.Tensor:
    """One frequency band of width ``U[0, freq_mask]`` and one time span of ``U[0, time_mask]``
    set to 0.

    ``lms`` ``(T, F)``; returns a new tensor (torchaudio's ``FrequencyMasking`` / ``TimeMasking``
    with ``iid_masks=False``, as AST and AudioMAE apply them once per clip).
    """
    out = lms.clone()
    T, F = out.shape
    for size, axis_len, axis in ((freq_mask, F, 1), (time_mask, T, 0)):
        width = int(rng.integers(0, min(size, axis_len) + 1)) if size > 0 else 0
        if width:
            start = int(rng.integers(0, axis_len - width + 1))
            if axis == 0:
                out[start : start + width] = 0.0
            else:
                out[:, start : start + width] = 0.0
    return out


def mixup_weight(rng: np.random.Generator, probability: float, alpha: float) -> float | None:
    """``lambda ~ Beta(alpha, alpha)`` with the given probability, else None (no mixing)."""
    if probability <= 0 or rng.random() >= probability:
        return None
    return float(rng.beta(alpha, alpha))


def mix(a: torch.Tensor, b: torch.Tensor, ya: torch.Tensor, yb: torch.Tensor, lam: float):
    """``(lam * a + (1 - lam) * b, lam * ya + (1 - lam) * yb)``: inputs and soft targets alike."""
    return lam * a + (1.0 - lam) * b, lam * ya + (1.0 - lam) * yb
