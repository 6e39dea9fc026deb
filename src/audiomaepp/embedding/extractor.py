"""Frozen-encoder embeddings of whole clips of any length (spec §7).

Every clip is turned into standardised 2-s chunks; the chunks of all clips are pooled into large
encoder batches (so many short clips and a few long ones both keep the GPU busy); tokens are
grouped into timestamp embeddings by the model's token layout. Memory stays bounded: only one
batch of chunks is on the device at a time, and scene embeddings are running sums.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..devices import resolve_device
from ..frontend import SAMPLE_RATE, LogMelFrontend, check_waveform, num_frames, standardize
from ..model import AudioMAE, AudioMAEConfig
from .layout import CHUNK_FRAMES, LAYOUTS, ChunkPlan, group_tokens, plan_chunks

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class _ClipState:
    plan: ChunkPlan
    want_steps: bool
    remaining: int  # chunks not yet encoded
    step_offset: int = 0  # steps already received
    parts: list[torch.Tensor] = field(default_factory=list)  # (50, 5D) pieces, when steps are wanted
    total: torch.Tensor | None = None  # running sum of kept steps, (5D,)


class Embedder(nn.Module):
    """An :class:`AudioMAE` encoder used as a feature extractor (also the HEAR model object).

    ``layout``: ``"release"`` or ``"time_major"`` (default: the model config's ``token_layout``).
    ``batch_size``: 2-s chunks per encoder call. ``dtype``: ``"auto"`` (bf16 autocast on CUDA,
    float32 on CPU), ``"float32"``, ``"bfloat16"`` or ``"float16"``. Outputs are float32.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model: AudioMAE,
        layout: str | None = None,
        batch_size: int = 256,
        dtype: str = "auto",
        name: str = "audiomaepp",
        cache_key: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.frontend = LogMelFrontend()
        self.layout = layout or model.config.token_layout
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown token layout {self.layout!r}; choose from {LAYOUTS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
        self.batch_size = batch_size
        self.dtype_name = dtype
        self.name = name
        self._key_base = cache_key or f"{name}-{_config_digest(model)}"
        cfg = model.config
        self.num_bands = cfg.grid_size[1]
        self.steps_per_chunk = cfg.grid_size[0]
        self.scene_embedding_size = int(self.num_bands * cfg.embed_dim)
        self.timestamp_embedding_size = int(self.num_bands * cfg.embed_dim)
        self.embedding_size = self.scene_embedding_size

    # ---- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, directory: str | Path, device: str | None = None, batch_size: int = 256,
                 layout: str | None = None, dtype: str = "auto") -> Embedder:
        """An embedder over a model directory (``save_pretrained`` or ``convert-release`` output)."""
        directory = Path(directory).resolve()
        model = AudioMAE.from_pretrained(directory)
        digest = _file_digest(directory / "model.safetensors")
        layout = layout or model.config.token_layout
        # a finished run exports RUN_DIR/model: then the run's folder is the telling name
        name = directory.parent.name if directory.name == "model" else directory.name
        emb = cls(model, layout, batch_size, dtype, name=name, cache_key=f"{name}-{digest[:16]}")
        return emb.to(resolve_device(device))

    @classmethod
    def random_init(cls, preset: str, seed: int = 0, device: str | None = None, batch_size: int = 256,
                    dtype: str = "auto", **overrides) -> Embedder:
        """A randomly initialised encoder of a preset: the 'no pretraining' baseline."""
        torch.manual_seed(seed)
        model = AudioMAE(AudioMAEConfig.preset(preset, **overrides))
        emb = cls(model, None, batch_size, dtype, name=f"random-{preset}",
                  cache_key=f"random-{preset}-seed{seed}-{_config_digest(model)}")
        return emb.to(resolve_device(device))

    @property
    def cache_key(self) -> str:
        """Names these embeddings in caches: the weights (or config + seed), layout and precision."""
        return f"{self._key_base}-{self.layout}-{self._dtype_name()}"

    # ---- public API ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def timestamp_embeddings(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio`` ``(B, N)`` at 16 kHz -> embeddings ``(B, S, 5 D)`` and stamps ``(B, S)`` in ms."""
        audio = check_waveform(audio, SAMPLE_RATE)
        steps = [s for _, s in self._run(audio, want_steps=True)]
        plan = self.plan(audio.shape[-1])
        stamps = plan.timestamps().to(audio.device).expand(len(steps), -1).contiguous()
        return torch.stack(steps).to(audio.device), stamps

    @torch.no_grad()
    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio`` ``(B, N)`` at 16 kHz -> ``(B, 5 D)``: the mean of the timestamp embeddings."""
        audio = check_waveform(audio, SAMPLE_RATE)
        return torch.stack([s for _, s in self._run(audio, want_steps=False)]).to(audio.device)

    def embed(self, audio: Sequence[np.ndarray]) -> np.ndarray:
        """Scene embeddings of clips of any lengths (mono float32 16 kHz arrays): ``(n, 5 D)``."""
        out = np.zeros((len(audio), self.scene_embedding_size), dtype=np.float32)
        with torch.no_grad():
            for idx, vec in self._run(audio, want_steps=False):
                out[idx] = vec.numpy()
        return out

    def iter_embeddings(
        self, audio: Iterable[np.ndarray | torch.Tensor], timestamps: bool = False
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Stream ``(index, scene (5D,) or steps (S, 5D))`` for clips in input order (CPU tensors)."""
        with torch.no_grad():
            yield from self._run(audio, want_steps=timestamps)

    def plan(self, num_samples: int) -> ChunkPlan:
        """How a clip of ``num_samples`` samples is chunked and how many steps it yields."""
        frames = num_frames(num_samples, self.frontend.cfg.hop_length)
        return plan_chunks(num_samples, frames, self.layout, self.steps_per_chunk)

    # ---- machinery -----------------------------------------------------------------------------------
    def _dtype_name(self) -> str:
        if self.dtype_name == "auto":
            return "bfloat16" if self.device.type == "cuda" else "float32"
        return self.dtype_name

    def _autocast(self) -> contextlib.AbstractContextManager:
        name = self._dtype_name()
        if name == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[name])

    def _chunks(self, wav: torch.Tensor) -> tuple[torch.Tensor, ChunkPlan]:
        """One clip ``(N,)`` -> standardised, zero-padded chunks ``(C, 1, 200, 80)``."""
        wav = wav.to(self.device, torch.float32).reshape(1, -1)
        lms = standardize(self.frontend(wav), unbiased=True)[0, 0]  # (T, 80)
        plan = self.plan(wav.shape[-1])
        lms = torch.nn.functional.pad(lms, (0, 0, 0, plan.pad_frames))  # (C*200, 80)
        return lms.reshape(plan.num_chunks, 1, CHUNK_FRAMES, lms.shape[-1]), plan

    def _encode(self, chunks: torch.Tensor) -> torch.Tensor:
        """``(b, 1, 200, 80)`` -> steps ``(b, 50, 5 D)`` float32, on the model's device."""
        with self._autocast():
            tokens = self.model.encode(chunks)
        return group_tokens(tokens.float(), self.layout, self.num_bands)

    def _run(self, clips: Iterable, want_steps: bool) -> Iterator[tuple[int, torch.Tensor]]:
        """Encode all chunks of all clips in shared batches; yield finished clips in order (CPU)."""
        states: dict[int, _ClipState] = {}
        queue: list[tuple[int, torch.Tensor]] = []  # (clip index, chunks of that clip not yet encoded)
        queued = 0
        next_out = 0
        for idx, clip in enumerate(clips):
            wav = torch.as_tensor(clip)
            if wav.ndim != 1 or wav.numel() == 0:
                raise ValueError(f"clip {idx}: expected non-empty mono audio (N,), got shape {tuple(wav.shape)}")
            chunks, plan = self._chunks(wav)
            states[idx] = _ClipState(plan, want_steps, remaining=plan.num_chunks)
            queue.append((idx, chunks))
            queued += plan.num_chunks
            while queued >= self.batch_size:
                queued -= self._flush(queue, states)
            while next_out in states and states[next_out].remaining == 0:
                yield next_out, self._finish(states.pop(next_out))
                next_out += 1
        while queued:
            queued -= self._flush(queue, states)
        while next_out in states:
            yield next_out, self._finish(states.pop(next_out))
            next_out += 1

    def _take(self, queue: list[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, list[int]]:
        """Pop up to ``batch_size`` chunks off the queue: ``(b, 1, 200, 80)`` and each row's clip."""
        owners: list[int] = []
        pieces: list[torch.Tensor] = []
        while queue and len(owners) < self.batch_size:
            idx, chunks = queue[0]
            n = min(self.batch_size - len(owners), chunks.shape[0])
            pieces.append(chunks[:n])
            owners += [idx] * n
            if n == chunks.shape[0]:
                queue.pop(0)
            else:
                queue[0] = (idx, chunks[n:])
        return torch.cat(pieces), owners

    def _flush(self, queue: list[tuple[int, torch.Tensor]], states: dict[int, _ClipState]) -> int:
        """Encode one batch of queued chunks and route the step vectors back to their clips."""
        chunks, owners = self._take(queue)
        steps = self._encode(chunks)  # (b, 50, 5D)
        # steps of each row that survive trimming (the last chunk of a clip may be partly padding)
        keeps = []
        for idx in owners:
            st = states[idx]
            keeps.append(max(0, min(self.steps_per_chunk, st.plan.num_steps - st.step_offset)))
            st.step_offset += self.steps_per_chunk
            st.remaining -= 1
        if states[owners[0]].want_steps:
            for row, idx in enumerate(owners):
                states[idx].parts.append(steps[row, : keeps[row]])
            return len(owners)
        # scene: one masked sum per row, one scatter-add per batch; no per-step work on the host
        clips = list(dict.fromkeys(owners))  # clips in this batch, in order
        slot = torch.tensor([clips.index(o) for o in owners], device=steps.device)
        valid = torch.arange(self.steps_per_chunk, device=steps.device) < torch.tensor(keeps, device=steps.device)[:, None]
        row_sums = (steps * valid[..., None]).sum(dim=1)  # (b, 5D)
        totals = torch.zeros(len(clips), steps.shape[-1], device=steps.device).index_add_(0, slot, row_sums)
        for k, idx in enumerate(clips):
            st = states[idx]
            st.total = totals[k] if st.total is None else st.total + totals[k]
        return len(owners)

    @staticmethod
    def _finish(state: _ClipState) -> torch.Tensor:
        if state.want_steps:
            return torch.cat(state.parts).cpu()  # (S, 5D)
        return (state.total / state.plan.num_steps).cpu()  # (5D,)


SceneEmbedder = Embedder  # the name the evaluation code asks for


def _config_digest(model: AudioMAE) -> str:
    """Short hash of the architecture: two random-init encoders of different shapes never share."""
    text = json.dumps(model.config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
