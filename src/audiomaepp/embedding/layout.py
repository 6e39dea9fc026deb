"""How 2-s chunks are cut from a clip and how encoder tokens become timestamp embeddings (spec §7).

Two named layouts:

* ``release`` — the authors' HEAR code, reproduced exactly: a whole extra chunk of padding when
  the clip is a multiple of 2 s, tokens grouped with ``(f t)`` (each "step" mixes two time steps
  and five bands), ``int(50 * pad / 200)`` steps trimmed, stamps at ``i * duration / n_steps``.
* ``time_major`` — the corrected grouping: step ``t`` is the 5 frequency tokens of the 40-ms patch
  row ``t`` (concatenated), only steps that hold real audio are kept, each stamped at its centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..frontend import INPUT_FRAMES, SAMPLE_RATE, FrontendConfig

CHUNK_FRAMES = INPUT_FRAMES  # one encoder input: 200 frames = 2 s
HOP_MS = 1000.0 * FrontendConfig().hop_length / SAMPLE_RATE  # front-end hop: 10 ms
LAYOUTS = ("release", "time_major")


@dataclass(frozen=True)
class ChunkPlan:
    """Chunking of one clip of ``num_samples`` samples (``frames`` log-mel frames)."""

    num_samples: int
    frames: int
    pad_frames: int  # zeros appended after the standardised log-mel
    num_chunks: int
    steps_per_chunk: int  # 50
    num_steps: int  # timestamp embeddings kept after trimming
    layout: str

    @property
    def duration_ms(self) -> float:
        return 1000.0 * self.num_samples / SAMPLE_RATE

    def timestamps(self) -> torch.Tensor:
        """``(num_steps,)`` float32 milliseconds."""
        i = torch.arange(self.num_steps, dtype=torch.float64)
        if self.layout == "release":
            ts = i * self.duration_ms / self.num_steps
        else:
            frames_per_step = CHUNK_FRAMES / self.steps_per_chunk  # 4 frames = 40 ms
            ts = (i * frames_per_step + (frames_per_step - 1) / 2) * HOP_MS  # the 4 frames' centre
        return ts.float()


def plan_chunks(num_samples: int, frames: int, layout: str, steps_per_chunk: int = 50) -> ChunkPlan:
    """Cut ``frames`` into 200-frame chunks the way ``layout`` does."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown token layout {layout!r}; choose from {LAYOUTS}")
    frames_per_step = CHUNK_FRAMES // steps_per_chunk
    if layout == "release":
        pad = CHUNK_FRAMES - frames % CHUNK_FRAMES  # 200 (a whole chunk) when already a multiple
        num_chunks = (frames + pad) // CHUNK_FRAMES
        num_steps = num_chunks * steps_per_chunk - int(steps_per_chunk * pad / CHUNK_FRAMES)
    else:
        num_chunks = math.ceil(frames / CHUNK_FRAMES)
        pad = num_chunks * CHUNK_FRAMES - frames
        duration_ms = 1000.0 * num_samples / SAMPLE_RATE
        # keep the steps that hold real frames and whose centre lies inside the clip
        centre_last = (frames_per_step - 1) / 2 * HOP_MS
        inside = int((duration_ms - centre_last) // (frames_per_step * HOP_MS)) + 1
        num_steps = max(1, min(math.ceil(frames / frames_per_step), inside))
    return ChunkPlan(num_samples, frames, pad, num_chunks, steps_per_chunk, num_steps, layout)


def group_tokens(tokens: torch.Tensor, layout: str, num_bands: int = 5) -> torch.Tensor:
    """Encoder tokens ``(C, 250, D)`` (time-major, cls dropped) -> steps ``(C, 50, 5 D)``."""
    C, L, D = tokens.shape
    steps = L // num_bands
    if layout == "release":
        # rearrange('b (f t) d -> b t (f d)', f=5) applied to a time-major sequence
        return (
            tokens.reshape(C, num_bands, steps, D)
            .permute(0, 2, 1, 3)
            .reshape(C, steps, num_bands * D)
        )
    return tokens.reshape(C, steps, num_bands * D)  # token t*5+f -> step t, band f
