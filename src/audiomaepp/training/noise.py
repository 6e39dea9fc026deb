"""Masking noise: reproducible, resumable, and the same whatever the number of ranks.

The noise of optimizer step ``s`` is one ``(G, L)`` uniform draw for the whole global batch
``G``, from a ``torch.Generator`` seeded by ``(seed, s)``. Rank ``r`` at micro-step ``m`` takes the
rows of its own samples, ``(r * A + m) * P + j`` for ``j < P`` (``A`` accumulation micro-steps of
``P`` samples), so the noise a sample gets is a function of ``(seed, rank, step, micro-step)`` and
of its place in the global batch only: 2 ranks x 4 samples see exactly the rows 1 rank x 8 sees.
"""

from __future__ import annotations

import torch

from ..seeds import mix_seed

NOISE_STREAM = 0x6E6F697365  # "noise": keeps this stream apart from other uses of the seed


class MaskNoise:
    """Per-step masking noise on ``device`` (generated there: no host-to-device copy)."""

    def __init__(
        self, seed: int, global_batch: int, num_patches: int, device: torch.device
    ) -> None:
        self.seed = seed
        self.shape = (global_batch, num_patches)
        self.device = device
        self.generator = torch.Generator(device=device)

    def for_step(self, step: int) -> torch.Tensor:
        """``(G, L)`` float32 noise of optimizer step ``step``."""
        self.generator.manual_seed(mix_seed(self.seed, NOISE_STREAM, step))
        return torch.rand(self.shape, generator=self.generator, device=self.device)


def micro_slice(rank: int, micro: int, accum: int, per_device: int) -> slice:
    """Rows of the global batch held by ``rank`` at micro-step ``micro`` (``P`` contiguous rows)."""
    start = (rank * accum + micro) * per_device
    return slice(start, start + per_device)
