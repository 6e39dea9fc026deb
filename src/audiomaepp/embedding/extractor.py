"""Frozen-encoder embeddings of whole clips of any length (spec §7), batched end to end.

One clip's way through, ``C`` = its number of 2-s chunks:

    samples (N,) -> reflect-padded and cut into C overlapping segments (C, 32 240)    [host]
    -> log-mel (C, 200, 80): one STFT call for a whole batch of segments of many clips [device]
    -> standardised with the clip's own mean and unbiased std over its real frames, padding = 0
    -> encoder (no decoder) -> tokens (C, 250, D) -> steps (C, 50, 5 D) by the token layout
    -> the first ``plan.num_steps`` steps are the timestamp embeddings; their mean is the scene one.

Chunks of many clips share front-end and encoder batches (many short clips and a few long ones
both fill a batch), results stay on the device until an encoder batch is done, and the host never
waits on the device per clip: everything per clip (owners, steps to keep) is known on the host
from the clip's length. Memory stays bounded: one batch of chunks is encoded at a time, scene
embeddings are running sums, and a clip longer than one encoder batch is streamed in two passes
(:mod:`audiomaepp.embedding.stream`: statistics first, then the chunks), so neither its log-mel
nor (for files) its samples are ever held whole.

The encoder runs in the precision :func:`~audiomaepp.embedding.precision.resolve_precision`
picks (``dtype="auto"``: bf16 where the CPU has native bf16 matmul), on the CPU through
:class:`~audiomaepp.embedding.cpu_encoder.FusedEncoder` (oneDNN linears with fused epilogues).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..devices import resolve_device
from ..errors import InvalidAudioError
from ..frontend import (
    INPUT_FRAMES,
    SAMPLE_RATE,
    STD_EPS,
    LogMelFrontend,
    check_waveform,
    num_frames,
)
from ..model import AudioMAE, AudioMAEConfig
from ..model.hub import resolve_model_dir
from ..model.spec import ModelSpec, parse_model_spec
from .cpu_encoder import chunk_encoder, uses_fused
from .layout import LAYOUTS, ChunkPlan, group_tokens, plan_chunks
from .precision import PRECISIONS, resolve_precision
from .stream import ArraySource, ClipStats, FileSource, SampleSource, clip_stats
from .stream import standardized_chunks as stream_chunks

CPU_BATCH = (
    64  # chunks per CPU encoder call; tiny, 2 threads: 64 -> 13.7, 32 -> 12.3, 16 -> 7.0 s/s
)
CUDA_BATCH = 256  # on a GPU large batches fill the device; memory is ~1 GiB for base in bf16
ChunkEncoder = Callable[[torch.Tensor], torch.Tensor]  # (b, 1, 200, 80) -> tokens (b, 1 + L, D)


@dataclass
class Prepared:
    """A clip whose pass 1 is done (:meth:`Embedder.prepare`): source plus statistics."""

    source: SampleSource
    stats: ClipStats

    @property
    def num_samples(self) -> int:
        return self.stats.num_samples


@dataclass
class _Clip:
    """Book-keeping of one clip in flight (host only)."""

    index: int
    plan: ChunkPlan
    encoded: int = 0  # chunks that went through the encoder
    parts: list[torch.Tensor] = field(default_factory=list)  # (k, 50, 5D) pieces, for steps


@dataclass
class _Piece:
    """What the front end hands the encoder loop: standardised chunks ``(R, 1, 200, 80)`` on the
    device, the clip of each row, and the clips that start in this piece."""

    new_clips: list[_Clip]
    chunks: torch.Tensor
    owners: list[_Clip]


class Embedder(nn.Module):
    """An :class:`AudioMAE` encoder used as a feature extractor (also the HEAR model object).

    ``layout``: ``"release"`` or ``"time_major"`` (default: the model config's ``token_layout``).
    ``batch_size``: 2-s chunks per encoder call (default 64 on CPU, 256 on CUDA). ``dtype``:
    ``"auto"`` (bf16 on CUDA and on CPUs with native bf16 matmul, else float32), ``"float32"``,
    ``"bfloat16"``, ``"float16"`` or ``"int8"`` (dynamic quantisation of the linears, CPU);
    outputs are float32. ``compile``: ``torch.compile`` the encoder (default: on CUDA). ``fused``:
    run the CPU encoder through oneDNN with fused epilogues (default: on CPU when available).
    The decoder is not kept.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model: AudioMAE,
        layout: str | None = None,
        batch_size: int | None = None,
        dtype: str = "auto",
        name: str = "audiomaepp",
        cache_key: str | None = None,
        compile: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        self.config: AudioMAEConfig = model.config
        self.encoder = model.encoder.eval()  # the decoder is dropped with ``model``
        self.frontend = LogMelFrontend()
        fcfg = self.frontend.cfg  # the model's img_size is this geometry (AudioMAEConfig checks)
        self.layout = layout or self.config.token_layout
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown token layout {self.layout!r}; choose from {LAYOUTS}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dtype not in ("auto", *PRECISIONS):
            raise ValueError(f"dtype must be 'auto' or one of {list(PRECISIONS)}, got {dtype!r}")
        self.requested_batch_size = batch_size
        self.dtype_name = dtype
        self.compile = compile
        self.fused = fused
        self.name = name
        self._key_base = cache_key or f"{name}-{_config_digest(self.config)}"
        self._runner: tuple[tuple, ChunkEncoder] | None = None  # (what it was built for, fn)
        self._backend: tuple[str, ChunkEncoder] | None = None  # an outside runtime (ONNX Runtime)
        self.num_bands = self.config.grid_size[1]
        self.steps_per_chunk = self.config.grid_size[0]
        self.scene_embedding_size = int(self.num_bands * self.config.embed_dim)
        self.timestamp_embedding_size = self.scene_embedding_size
        self.embedding_size = self.scene_embedding_size
        self.segment_samples = fcfg.n_fft + fcfg.hop_length * (INPUT_FRAMES - 1)  # 32 240
        self.chunk_samples = fcfg.hop_length * INPUT_FRAMES  # 32 000: chunk k starts at k * 2 s

    # ---- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_dir(
        cls,
        directory: str | Path,
        device: str | None = None,
        batch_size: int | None = None,
        layout: str | None = None,
        dtype: str = "auto",
        compile: bool | None = None,
        fused: bool | None = None,
    ) -> Embedder:
        """An embedder over a model directory (``save_pretrained`` / ``convert-release`` output)
        or a Hugging Face Hub repo id (``owner/name``, fetched into the Hub cache)."""
        local = resolve_model_dir(directory)
        model = AudioMAE.from_pretrained(local)
        digest = _file_digest(local / "model.safetensors")
        name = parse_model_spec(directory).name  # a Hub repo's name, not its snapshot's hash
        emb = cls(
            model,
            layout,
            batch_size,
            dtype,
            name=name,
            cache_key=f"{name}-{digest[:16]}",
            compile=compile,
            fused=fused,
        )
        return emb.to(resolve_device(device))

    @classmethod
    def random_init(
        cls,
        preset: str,
        seed: int = 0,
        device: str | None = None,
        batch_size: int | None = None,
        dtype: str = "auto",
        compile: bool | None = None,
        fused: bool | None = None,
        **overrides,
    ) -> Embedder:
        """A randomly initialised encoder of a preset: the 'no pretraining' baseline."""
        torch.manual_seed(seed)
        model = AudioMAE(AudioMAEConfig.preset(preset, **overrides))
        emb = cls(
            model,
            None,
            batch_size,
            dtype,
            name=ModelSpec("random", preset).name,
            cache_key=f"random-{preset}-seed{seed}-{_config_digest(model.config)}",
            compile=compile,
            fused=fused,
        )
        return emb.to(resolve_device(device))

    # ---- what runs -------------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """The number format the encoder runs in here (``dtype`` with ``auto`` resolved)."""
        if self._backend is not None:
            return self._backend[0].split(":", 1)[1]
        return resolve_precision(self.dtype_name, self.device)

    @property
    def backend(self) -> str:
        """``torch-fused`` (oneDNN, CPU), ``torch`` (eager / compiled) or an outside runtime."""
        if self._backend is not None:
            return self._backend[0].split(":", 1)[0]
        return "torch-fused" if self._use_fused() else "torch"

    def use_backend(self, backend: str, precision: str, encoder: ChunkEncoder) -> None:
        """Run chunks through ``encoder`` (e.g. an ONNX Runtime session) instead of torch."""
        self._backend = (f"{backend}:{precision}", encoder)

    @property
    def cache_key(self) -> str:
        """Names these embeddings in caches: weights (or config + seed), layout, precision and
        backend (the torch backends compute the same numbers, outside runtimes may not)."""
        key = f"{self._key_base}-{self.layout}-{self.precision}"
        return key if self.backend.startswith("torch") else f"{key}-{self.backend}"

    def describe(self) -> dict:
        """What ran, for reports and metadata."""
        return {
            "model": self.name,
            "layout": self.layout,
            "precision": self.precision,
            "backend": self.backend,
            "device": str(self.device),
            "batch_size": self.batch_size,
        }

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def batch_size(self) -> int:
        if self.requested_batch_size is not None:
            return self.requested_batch_size
        return CUDA_BATCH if self.device.type == "cuda" else CPU_BATCH

    # ---- public API ------------------------------------------------------------------------------
    @torch.no_grad()
    def timestamp_embeddings(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio`` ``(B, N)`` at 16 kHz -> embeddings ``(B, S, 5 D)`` and stamps ``(B, S)`` in ms,
        on the input's device."""
        audio = check_waveform(audio, SAMPLE_RATE)  # the one finiteness check (one host sync)
        steps = torch.stack([s for _, s in self._run(audio, want_steps=True, to_host=False)])
        stamps = self.plan(audio.shape[-1]).timestamps().to(audio.device).expand(len(steps), -1)
        return steps.to(audio.device), stamps.contiguous()

    @torch.no_grad()
    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio`` ``(B, N)`` at 16 kHz -> ``(B, 5 D)``: the mean of the timestamp embeddings."""
        audio = check_waveform(audio, SAMPLE_RATE)
        scenes = [s for _, s in self._run(audio, want_steps=False, to_host=False)]
        return torch.stack(scenes).to(audio.device)

    def embed(self, audio: Sequence[np.ndarray]) -> np.ndarray:
        """Scene embeddings of clips of any lengths (mono float32 16 kHz arrays): ``(n, 5 D)``."""
        out = np.zeros((len(audio), self.scene_embedding_size), dtype=np.float32)
        for idx, vec in self.iter_embeddings(audio):
            out[idx] = vec.numpy()
        return out

    def iter_embeddings(
        self, audio: Iterable[np.ndarray | torch.Tensor | Prepared | FileSource], timestamps=False
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Stream ``(index, scene (5D,) or steps (S, 5D))`` for clips in input order (CPU tensors).

        Items are mono 16 kHz arrays, :class:`FileSource` (a file decoded block by block) or
        :meth:`prepare` results. A clip whose embedding is not finite (NaN or infinite samples)
        raises :class:`~audiomaepp.errors.InvalidAudioError` naming its index."""
        with torch.no_grad():
            yield from self._run(audio, want_steps=timestamps, to_host=True)

    def prepare(self, source: SampleSource) -> Prepared:
        """Pass 1 of a long clip (read it once: length, log-mel statistics); raises what reading
        the source raises, before the clip joins any batch (a bad file fails alone)."""
        stats = clip_stats(source, self.frontend, self._chunks_for, self.batch_size)
        return Prepared(source, stats)

    def plan(self, num_samples: int) -> ChunkPlan:
        """How a clip of ``num_samples`` samples is chunked and how many steps it yields."""
        frames = num_frames(num_samples, self.frontend.cfg.hop_length)
        return plan_chunks(num_samples, frames, self.layout, self.steps_per_chunk)

    def _chunks_for(self, num_samples: int) -> int:
        return self.plan(num_samples).num_chunks

    # ---- front end: clips -> standardised chunks -------------------------------------------------
    def segments(self, wav: torch.Tensor, num_chunks: int) -> torch.Tensor:
        """One clip ``(N,)`` -> the samples under each chunk's 200 frames, ``(C, 32 240)``.

        Frame ``j`` of the centred STFT covers samples ``[160 j - 200, 160 j + 200)``, so chunk
        ``k`` (frames ``200 k ...``) needs ``[32 000 k - 200, 32 000 k + 32 040)``. Reflect padding
        at the clip's edges is the STFT's own; samples past the end are zeros (their frames are
        dropped).
        """
        half = self.frontend.cfg.n_fft // 2
        if wav.numel() <= half:  # reflect padding needs more than half a window (as the front end)
            wav = torch.nn.functional.pad(wav, (0, half + 1 - wav.numel()))
        padded = torch.nn.functional.pad(wav.reshape(1, 1, -1), (half, half), mode="reflect")
        padded = padded.reshape(-1)
        need = self.chunk_samples * (num_chunks - 1) + self.segment_samples
        padded = torch.nn.functional.pad(padded, (0, max(0, need - padded.numel())))
        return padded.unfold(0, self.segment_samples, self.chunk_samples)[:num_chunks]

    def standardized_chunks(
        self, segments: torch.Tensor, plans: Sequence[ChunkPlan]
    ) -> torch.Tensor:
        """Segments of whole clips ``(sum C, 32 240)`` on the device -> encoder inputs
        ``(sum C, 1, 200, 80)``: log-mel in batches of ``batch_size`` (one STFT each), each clip
        standardised by its own statistics (unbiased std over its real frames), padding frames zero.
        """
        device = segments.device
        lms = torch.cat([self.frontend.frames(s) for s in segments.split(self.batch_size)])
        counts = self._small([p.num_chunks for p in plans], device)  # (R, 200, 80) above
        # output_size given: otherwise repeat_interleave reads the counts back (a host sync)
        owner = torch.repeat_interleave(
            torch.arange(len(plans), device=device), counts, output_size=len(lms)
        )  # (R,)
        first = torch.cumsum(counts, 0) - counts  # each clip's first row
        chunk_no = torch.arange(len(owner), device=device) - first[owner]
        frames = self._small([p.frames for p in plans], device)
        frame_no = (chunk_no * INPUT_FRAMES)[:, None] + torch.arange(INPUT_FRAMES, device=device)
        real = (frame_no < frames[owner, None])[..., None].to(lms.dtype)  # (R, 200, 1)
        n = frames.to(torch.float64) * lms.shape[-1]  # values per clip
        # two passes in float64, as torch.std does over the whole clip (no cancellation)
        sums = torch.zeros(len(plans), dtype=torch.float64, device=device)
        mean = sums.index_add(0, owner, (lms * real).sum(dim=(1, 2), dtype=torch.float64)) / n
        dev = (lms - mean[owner, None, None].float()) * real  # (R, 200, 80), 0 on padding
        var = sums.index_add(0, owner, dev.pow(2).sum(dim=(1, 2), dtype=torch.float64)) / (n - 1)
        scale = 1.0 / (var.sqrt() + STD_EPS)
        return (dev * scale[owner, None, None].float()).unsqueeze(1)

    def _to_device(self, segments: torch.Tensor) -> torch.Tensor:
        """Host segments -> device: pinned and copied asynchronously on CUDA."""
        if self.device.type == "cuda" and segments.device.type == "cpu":
            return segments.pin_memory().to(self.device, non_blocking=True)
        return segments.to(self.device)

    @staticmethod
    def _small(values: list[int], device: torch.device) -> torch.Tensor:
        """A small int64 tensor of host values on ``device``, without a host sync on CUDA (a
        pageable host-to-device copy would wait for the stream; a pinned one does not)."""
        t = torch.tensor(values, dtype=torch.int64)
        if device.type == "cuda":
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)

    def _front_end(self, clips: Iterable) -> Iterator[_Piece]:
        """Group short clips until they fill an encoder batch; stream long ones on their own."""
        group: list[_Clip] = []
        pieces: list[torch.Tensor] = []
        rows = 0
        for idx, clip in enumerate(clips):
            streamed = self._as_stream(idx, clip)
            if streamed is not None:
                if group:
                    yield self._standardize_group(pieces, group)
                    group, pieces, rows = [], [], 0
                yield from self._stream(idx, streamed)
                continue
            wav = torch.as_tensor(clip)
            plan = self.plan(wav.numel())
            group.append(_Clip(idx, plan))
            pieces.append(self.segments(wav.float(), plan.num_chunks))
            rows += plan.num_chunks
            if rows >= self.batch_size:
                yield self._standardize_group(pieces, group)
                group, pieces, rows = [], [], 0
        if group:
            yield self._standardize_group(pieces, group)

    def _as_stream(self, idx: int, clip) -> Prepared | None:
        """A clip to stream (a file, a prepared clip, or more samples than one batch), else None."""
        if isinstance(clip, Prepared):
            return clip
        if isinstance(clip, FileSource):
            return self.prepare(clip)
        if not (torch.is_tensor(clip) or isinstance(clip, np.ndarray)) or clip.ndim != 1:
            shape = tuple(getattr(clip, "shape", ()))
            raise ValueError(f"clip {idx}: expected non-empty mono audio (N,), got shape {shape}")
        if len(clip) == 0:
            raise ValueError(f"clip {idx}: expected non-empty mono audio (N,), got shape (0,)")
        if self.plan(len(clip)).num_chunks <= self.batch_size:
            return None
        return self.prepare(ArraySource(clip))

    def _stream(self, idx: int, clip: Prepared) -> Iterator[_Piece]:
        """Pass 2 of a long clip: pieces of at most ``batch_size`` standardised chunks."""
        state = _Clip(idx, self.plan(clip.num_samples))
        new = [state]
        for chunks in stream_chunks(
            clip.source, clip.stats, self.frontend, self._chunks_for, self.batch_size
        ):
            yield _Piece(new, chunks.unsqueeze(1), [state] * len(chunks))
            new = []

    def _standardize_group(self, pieces: list[torch.Tensor], group: list[_Clip]) -> _Piece:
        segments = self._to_device(torch.cat(pieces))
        chunks = self.standardized_chunks(segments, [c.plan for c in group])
        owners = [c for c in group for _ in range(c.plan.num_chunks)]
        return _Piece(group, chunks, owners)

    # ---- encoder ---------------------------------------------------------------------------------
    def _use_fused(self) -> bool:
        return uses_fused(self.device, self.precision, self.fused, self.compile)

    def _chunk_encoder(self) -> ChunkEncoder:
        """The function that encodes chunks here, built once per device and precision."""
        if self._backend is not None:
            return self._backend[1]
        key = (self.device, self.precision, self._use_fused(), self.batch_size)
        if self._runner is None or self._runner[0] != key:
            fn = chunk_encoder(
                self.encoder, self.precision, self.batch_size, self.fused, self.compile
            )
            self._runner = (key, fn)
        return self._runner[1]

    def encode_chunks(self, chunks: torch.Tensor) -> torch.Tensor:
        """``(b, 1, 200, 80)`` -> steps ``(b, 50, 5 D)`` float32, on the model's device."""
        tokens = self._chunk_encoder()(chunks)[:, 1:]  # cls dropped: (b, 250, D)
        return group_tokens(tokens.float(), self.layout, self.num_bands)

    # ---- the loop --------------------------------------------------------------------------------
    def _run(
        self, clips: Iterable, want_steps: bool, to_host: bool
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Encode the chunks of all clips in shared batches; yield finished clips in input order."""
        yield from _EncodeLoop(self, want_steps, to_host).run(self._front_end(clips))


class _EncodeLoop:
    """Chunks of many clips -> encoder batches of ``batch_size`` -> finished clips, in order.

    Steps: :meth:`admit` a front-end piece, :meth:`encode` one batch from the queue (its rows may
    belong to several clips, a clip's rows to several batches), :meth:`record` each row's kept
    steps (a running sum per clip, or the steps themselves), and :meth:`finished` yields the
    clips at the front whose every chunk is encoded."""

    def __init__(self, emb: Embedder, want_steps: bool, to_host: bool) -> None:
        self.emb, self.want_steps, self.to_host = emb, want_steps, to_host
        self.open_clips: list[_Clip] = []  # not yet yielded, in input order
        self.queue: list[torch.Tensor] = []  # standardised chunks waiting for the encoder
        self.queued = 0
        self.owners: list[_Clip] = []  # owner of every queued row, in order
        self.totals: torch.Tensor | None = None  # (len(open_clips), 5D) sums of kept steps

    def run(self, pieces: Iterable[_Piece]) -> Iterator[tuple[int, torch.Tensor]]:
        size = self.emb.batch_size
        for piece in pieces:
            self.admit(piece)
            while self.queued >= size:
                self.encode(size)
                yield from self.finished()
        while self.queued:
            self.encode(min(self.queued, size))
            yield from self.finished()

    def admit(self, piece: _Piece) -> None:
        self.open_clips += piece.new_clips
        self.owners += piece.owners
        self.queue.append(piece.chunks)
        self.queued += len(piece.chunks)
        if not self.want_steps and piece.new_clips:
            fresh = torch.zeros(
                len(piece.new_clips), self.emb.scene_embedding_size, device=piece.chunks.device
            )
            self.totals = fresh if self.totals is None else torch.cat([self.totals, fresh])

    def _take(self, size: int) -> tuple[torch.Tensor, list[_Clip]]:
        batch = torch.cat(self.queue) if len(self.queue) > 1 else self.queue[0]
        chunks, rest = batch[:size], batch[size:]
        self.queue, self.queued = ([rest] if len(rest) else []), self.queued - size
        owners = self.owners[:size]
        del self.owners[:size]
        return chunks, owners

    def encode(self, size: int) -> None:
        chunks, owners = self._take(size)
        self.record(self.emb.encode_chunks(chunks), owners)  # steps (b, 50, 5D)

    def record(self, steps: torch.Tensor, owners: list[_Clip]) -> None:
        per_chunk = self.emb.steps_per_chunk
        keeps = []  # steps of each row that survive trimming (host arithmetic)
        for clip in owners:
            keeps.append(max(0, min(per_chunk, clip.plan.num_steps - clip.encoded * per_chunk)))
            clip.encoded += 1
        if self.want_steps:
            start = 0
            for clip, count in _runs(owners):
                clip.parts.append(steps[start : start + count])
                start += count
            return
        small = self.emb._small
        valid = torch.arange(per_chunk, device=steps.device) < small(keeps, steps.device)[:, None]
        row_sums = (steps * valid[..., None]).sum(dim=1)  # (b, 5D): each row's kept steps
        base = self.open_clips[0].index
        slots = small([c.index - base for c in owners], steps.device)
        self.totals = self.totals.index_add_(0, slots, row_sums)

    def finished(self) -> Iterator[tuple[int, torch.Tensor]]:
        done = 0
        while done < len(self.open_clips) and (
            self.open_clips[done].encoded == self.open_clips[done].plan.num_chunks
        ):
            done += 1
        if not done:
            return
        clips = self.open_clips[:done]
        del self.open_clips[:done]
        if self.want_steps:
            results = [torch.cat(c.parts).flatten(0, 1)[: c.plan.num_steps] for c in clips]
        else:
            counts = self.emb._small([c.plan.num_steps for c in clips], self.totals.device)
            results = list(self.totals[:done] / counts[:, None])
            self.totals = self.totals[done:]
        if self.to_host:
            results = _to_host(results, clips)
        for clip, result in zip(clips, results, strict=True):
            yield clip.index, result


def _runs(owners: list[_Clip]) -> Iterator[tuple[_Clip, int]]:
    """Consecutive rows of the same clip: ``(clip, row count)`` in order."""
    start = 0
    for i in range(1, len(owners) + 1):
        if i == len(owners) or owners[i] is not owners[start]:
            yield owners[start], i - start
            start = i


def _to_host(results: list[torch.Tensor], clips: list[_Clip]) -> list[torch.Tensor]:
    """One device-to-host copy for a whole batch of finished clips, then one finiteness check."""
    sizes = [len(r) if r.ndim == 2 else 1 for r in results]
    flat = torch.cat([r.reshape(-1, r.shape[-1]) for r in results]).cpu()  # (sum S or n, 5D)
    finite = torch.isfinite(flat).all(dim=1)
    if not bool(finite.all()):
        bad = next(
            c.index for c, ok in zip(clips, finite.split(sizes), strict=True) if not bool(ok.all())
        )
        raise InvalidAudioError(
            f"clip {bad}: its embedding is not finite (NaN or infinite samples?)"
        )
    parts = flat.split(sizes)
    return [p if r.ndim == 2 else p[0] for p, r in zip(parts, results, strict=True)]


def _config_digest(config: AudioMAEConfig) -> str:
    """Short hash of the architecture: two random-init encoders of different shapes never share."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
