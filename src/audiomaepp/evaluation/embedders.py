"""What evaluation needs from a model: the :class:`ClipEmbedder` protocol, the log-mel baseline
and the ``make_embedder`` factory for command-line specs.

Model embedders (``random:<preset>``, a model directory or Hub repo id) are
:class:`audiomaepp.embedding.Embedder` objects, imported only when such a spec is used, so
evaluation runs with the baseline alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import AudioMAEError, ModelSpecError
from ..frontend import log_mel
from ..model.spec import parse_model_spec

__all__ = ["ClipEmbedder", "LogMelStatsEmbedder", "BASELINES", "make_embedder", "EmbedderError"]


class EmbedderError(AudioMAEError, ValueError):
    """A model spec that cannot be turned into an embedder, or an embedder that misbehaves."""


@runtime_checkable
class ClipEmbedder(Protocol):
    """Maps whole clips to scene embeddings: :class:`audiomaepp.embedding.Embedder`, the log-mel
    baseline, or any object of this shape.

    ``name``: row label in reports. ``cache_key``: changes whenever the embeddings would (weights,
    layout, front end), so cached embeddings are never reused across models. Optionally
    ``embedding_size: int``. ``embed(audio)`` takes a list of mono float32 16 kHz arrays of any
    lengths and returns ``(len(audio), d)`` float32.
    """

    name: str
    cache_key: str

    def embed(self, audio: Sequence[np.ndarray]) -> np.ndarray: ...


class LogMelStatsEmbedder:
    """Baseline: per-mel-bin mean and population std over time of the log-mel, dim 160.

    ``[mean_0..mean_79, std_0..std_79]`` of ``audiomaepp.frontend.log_mel`` (no standardisation:
    the probe standardises embeddings with training statistics). Clips of equal length are run
    together in batches of ``batch_size``.
    """

    name = "logmel"
    embedding_size = 160
    cache_key = "logmel-stats-v1"

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size

    def _stats(self, clips: list[np.ndarray]) -> np.ndarray:
        wav = torch.from_numpy(np.stack(clips).astype(np.float32, copy=False))  # (B, N)
        lm = log_mel(wav)[:, 0]  # (B, T, 80)
        feats = torch.cat([lm.mean(dim=1), lm.std(dim=1, unbiased=False)], dim=1)  # (B, 160)
        return feats.numpy()

    def embed(self, audio: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty((len(audio), self.embedding_size), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, clip in enumerate(audio):
            by_length.setdefault(len(clip), []).append(i)
        with torch.no_grad():
            for idx in by_length.values():
                for s in range(0, len(idx), self.batch_size):
                    part = idx[s : s + self.batch_size]
                    out[part] = self._stats([np.asarray(audio[i]) for i in part])
        return out


# Models that are no AudioMAE, by the name a user gives them (added to the model layer's specs).
BASELINES: dict[str, type] = {"logmel": LogMelStatsEmbedder}


def make_embedder(
    spec: str,
    *,
    device: str = "auto",
    batch_size: int | None = None,
    seed: int = 0,
    layout: str | None = None,
    dtype: str = "auto",
) -> ClipEmbedder:
    """Build an embedder from a model spec (:func:`audiomaepp.model.spec.parse_model_spec`).

    - ``logmel``: :class:`LogMelStatsEmbedder` (CPU, ignores ``device``).
    - ``random:<preset>``: ``Embedder.random_init(preset, seed=seed, device=..., batch_size=...)``,
      the random-init encoder baseline.
    - a model directory or Hub repo id: ``Embedder.from_dir(path, device=..., batch_size=...,
      layout=...)``. ``batch_size`` / ``layout`` are passed only when given.

    ``dtype``: the encoder's precision (``auto``: bf16 on CUDA and on CPUs with native bf16
    matmul, else float32); it is part of the embedder's ``cache_key``.
    """
    try:
        parsed = parse_model_spec(spec, baselines=BASELINES)
    except ModelSpecError as exc:
        raise EmbedderError(str(exc)) from exc
    if parsed.kind == "baseline":
        return BASELINES[parsed.target](**({"batch_size": batch_size} if batch_size else {}))
    from ..embedding import Embedder  # lazy: the log-mel baseline needs no model code

    kwargs: dict[str, Any] = {"device": str(resolve_device(device))}
    if dtype != "auto":  # the Embedder's own default is auto
        kwargs["dtype"] = dtype
    if batch_size:
        kwargs["batch_size"] = batch_size
    if parsed.kind == "random":
        return Embedder.random_init(parsed.target, seed=seed, **kwargs)
    if layout is not None:
        kwargs["layout"] = layout
    return Embedder.from_dir(
        Path(parsed.target) if parsed.kind == "folder" else parsed.target, **kwargs
    )
