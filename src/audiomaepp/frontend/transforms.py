"""Per-clip standardisation and the 200-frame crop / tile helpers (spec §1).

All functions take log-mels laid out time first, ``(..., T, 80)``.
"""

from __future__ import annotations

import torch

__all__ = [
    "STD_EPS",
    "INPUT_FRAMES",
    "standardize",
    "clip_stats",
    "tile_to",
    "random_crop",
    "crop_start",
    "crop_or_tile",
]

STD_EPS = 1e-8  # added to the std, as in the release
INPUT_FRAMES = 200  # one model input is 2 s = 200 frames


def standardize(lms: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """``(x - mean) / (std + 1e-8)`` over each clip's frames and bins together.

    ``lms``: ``(B, 1, T, F)`` or ``(B, T, F)`` or ``(T, F)``; statistics are per leading item.
    ``unbiased=True`` is the HEAR feature extractor's choice (std over the clip it is given);
    ``unbiased=False`` (population std) is what pretraining used on each stored clip.
    """
    if lms.ndim == 2:
        return standardize(lms.unsqueeze(0), unbiased).squeeze(0)
    mean, std = clip_stats(lms, unbiased)
    return (lms - mean) / (std + STD_EPS)


def clip_stats(lms: torch.Tensor, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std :func:`standardize` uses, per leading item, kept as broadcastable dims.

    ``lms``: ``(B, ...)``, or ``(T, F)`` for one clip (then both are ``(1, 1)``). The pretraining
    loader applies stored statistics of the whole clip to a crop with the same arithmetic.
    """
    if lms.ndim == 2:
        mean, std = clip_stats(lms.unsqueeze(0), unbiased)
        return mean.squeeze(0), std.squeeze(0)
    dims = tuple(range(1, lms.ndim))
    mean = lms.mean(dim=dims, keepdim=True)
    return mean, lms.std(dim=dims, keepdim=True, unbiased=unbiased)


def tile_to(lms: torch.Tensor, frames: int = INPUT_FRAMES) -> torch.Tensor:
    """Repeat a clip ``(..., T, F)`` along time until it has ``frames`` frames or more, then cut."""
    t = lms.shape[-2]
    if t == 0:
        raise ValueError("cannot tile an empty log-mel (0 frames)")
    if t >= frames:
        return lms
    reps = -(-frames // t)  # ceil
    shape = [1] * lms.ndim
    shape[-2] = reps
    return lms.repeat(*shape)[..., :frames, :]


def random_crop(
    lms: torch.Tensor, frames: int = INPUT_FRAMES, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A uniformly random window of ``frames`` frames from ``(..., T, F)`` with ``T >= frames``."""
    start = crop_start(lms.shape[-2], frames, generator)
    return lms[..., start : start + frames, :]


def crop_start(t: int, frames: int = INPUT_FRAMES, generator: torch.Generator | None = None) -> int:
    """The first frame of a uniformly random ``frames``-frame window of ``t >= frames`` frames.

    One draw of ``generator`` per call (also when ``t == frames``), so a stream of crops keeps its
    sequence whether or not a clip needed cropping.
    """
    return int(torch.randint(0, t - frames + 1, (1,), generator=generator))


def crop_or_tile(
    lms: torch.Tensor, frames: int = INPUT_FRAMES, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pretraining view of one clip: a random 200-frame crop, short clips tiled first."""
    return random_crop(tile_to(lms, frames), frames, generator)
