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
from the clip's length. Memory stays bounded: one batch of chunks is encoded at a time and scene
embeddings are running sums; only a single clip's log-mel is held whole (its statistics need it).
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
from ..errors import InvalidAudioError
from ..frontend import SAMPLE_RATE, STD_EPS, LogMelFrontend, check_waveform, num_frames
from ..model import AudioMAE, AudioMAEConfig
from ..model.hub import resolve_model_dir
from ..model.spec import ModelSpec, parse_model_spec
from .layout import CHUNK_FRAMES, LAYOUTS, ChunkPlan, group_tokens, plan_chunks

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_BATCH = 64  # chunks per CPU encoder call; tiny, 2 busy threads: 64 -> 13.7, 32 -> 12.3, 16 -> 7.0 s of audio/s
CUDA_BATCH = 256  # on a GPU large batches fill the device; memory is ~1 GiB for base in bf16


@dataclass
class _Clip:
    """Book-keeping of one clip in flight (host only)."""

    index: int
    plan: ChunkPlan
    encoded: int = 0  # chunks that went through the encoder
    parts: list[torch.Tensor] = field(
        default_factory=list
    )  # (k, 50, 5D) pieces, when steps are wanted


class Embedder(nn.Module):
    """An :class:`AudioMAE` encoder used as a feature extractor (also the HEAR model object).

    ``layout``: ``"release"`` or ``"time_major"`` (default: the model config's ``token_layout``).
    ``batch_size``: 2-s chunks per encoder call (default 64 on CPU, 256 on CUDA). ``dtype``:
    ``"auto"`` (bf16 autocast on CUDA, float32 on CPU), ``"float32"``, ``"bfloat16"`` or
    ``"float16"``; outputs are float32. ``compile``: ``torch.compile`` the encoder (default: on
    CUDA, where it pays; on CPU the compile time outweighs the gain for typical jobs).
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
    ) -> None:
        super().__init__()
        self.config: AudioMAEConfig = model.config
        self.encoder = model.encoder.eval()  # the decoder is dropped with ``model``
        self.frontend = LogMelFrontend()
        self.layout = layout or self.config.token_layout
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown token layout {self.layout!r}; choose from {LAYOUTS}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
        self.requested_batch_size = batch_size
        self.dtype_name = dtype
        self.compile = compile
        self.name = name
        self._key_base = cache_key or f"{name}-{_config_digest(self.config)}"
        self._compiled: nn.Module | None = None
        self.num_bands = self.config.grid_size[1]
        self.steps_per_chunk = self.config.grid_size[0]
        self.scene_embedding_size = int(self.num_bands * self.config.embed_dim)
        self.timestamp_embedding_size = self.scene_embedding_size
        self.embedding_size = self.scene_embedding_size
        hop = self.frontend.cfg.hop_length
        self.segment_samples = self.frontend.cfg.n_fft + hop * (CHUNK_FRAMES - 1)  # 32 240
        self.chunk_samples = hop * CHUNK_FRAMES  # 32 000: chunk k starts at sample k * 2 s

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
        )
        return emb.to(resolve_device(device))

    @property
    def cache_key(self) -> str:
        """Names these embeddings in caches: the weights (or config + seed), layout and precision."""
        return f"{self._key_base}-{self.layout}-{self._dtype_name()}"

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
        audio = check_waveform(
            audio, SAMPLE_RATE
        )  # the one finiteness check (one host sync) per call
        steps = torch.stack([s for _, s in self._run(audio, want_steps=True, to_host=False)])
        stamps = self.plan(audio.shape[-1]).timestamps().to(audio.device).expand(len(steps), -1)
        return steps.to(audio.device), stamps.contiguous()

    @torch.no_grad()
    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio`` ``(B, N)`` at 16 kHz -> ``(B, 5 D)``: the mean of the timestamp embeddings."""
        audio = check_waveform(audio, SAMPLE_RATE)
        return torch.stack([s for _, s in self._run(audio, want_steps=False, to_host=False)]).to(
            audio.device
        )

    def embed(self, audio: Sequence[np.ndarray]) -> np.ndarray:
        """Scene embeddings of clips of any lengths (mono float32 16 kHz arrays): ``(n, 5 D)``."""
        out = np.zeros((len(audio), self.scene_embedding_size), dtype=np.float32)
        for idx, vec in self.iter_embeddings(audio):
            out[idx] = vec.numpy()
        return out

    def iter_embeddings(
        self, audio: Iterable[np.ndarray | torch.Tensor], timestamps: bool = False
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Stream ``(index, scene (5D,) or steps (S, 5D))`` for clips in input order (CPU tensors).

        A clip whose embedding is not finite (NaN or infinite samples) raises
        :class:`~audiomaepp.errors.InvalidAudioError` naming its index."""
        with torch.no_grad():
            yield from self._run(audio, want_steps=timestamps, to_host=True)

    def plan(self, num_samples: int) -> ChunkPlan:
        """How a clip of ``num_samples`` samples is chunked and how many steps it yields."""
        frames = num_frames(num_samples, self.frontend.cfg.hop_length)
        return plan_chunks(num_samples, frames, self.layout, self.steps_per_chunk)

    # ---- front end: clips -> standardised chunks -------------------------------------------------------
    def segments(self, wav: torch.Tensor, num_chunks: int) -> torch.Tensor:
        """One clip ``(N,)`` -> the samples under each chunk's 200 frames, ``(C, 32 240)``.

        Frame ``j`` of the centred STFT covers samples ``[160 j - 200, 160 j + 200)``, so chunk ``k``
        (frames ``200 k ...``) needs ``[32 000 k - 200, 32 000 k + 32 040)``. Reflect padding at the
        clip's edges is the STFT's own; samples past the end are zeros (their frames are dropped).
        """
        half = self.frontend.cfg.n_fft // 2
        if wav.numel() <= half:  # reflect padding needs more than half a window (as the front end)
            wav = torch.nn.functional.pad(wav, (0, half + 1 - wav.numel()))
        padded = torch.nn.functional.pad(
            wav.reshape(1, 1, -1), (half, half), mode="reflect"
        ).reshape(-1)
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
        lms = torch.cat(
            [self.frontend.frames(s) for s in segments.split(self.batch_size)]
        )  # (R, 200, 80)
        counts = self._small([p.num_chunks for p in plans], device)
        # output_size given: otherwise repeat_interleave reads the counts back (a host sync)
        owner = torch.repeat_interleave(
            torch.arange(len(plans), device=device), counts, output_size=len(lms)
        )  # (R,)
        first = torch.cumsum(counts, 0) - counts  # each clip's first row
        chunk_no = torch.arange(len(owner), device=device) - first[owner]
        frames = self._small([p.frames for p in plans], device)
        real = (chunk_no * CHUNK_FRAMES)[:, None] + torch.arange(
            CHUNK_FRAMES, device=device
        ) < frames[owner, None]
        real = real[..., None].to(lms.dtype)  # (R, 200, 1): 1 on the clip's own frames
        n = frames.to(torch.float64) * lms.shape[-1]  # values per clip
        # two passes in float64, as torch.std does over the whole clip (no sum-of-squares cancellation)
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

    def _front_end(self, clips: Iterable) -> Iterator[tuple[list[_Clip], torch.Tensor]]:
        """Group whole clips until they fill an encoder batch; yield each group's clips and
        standardised chunks ``(sum C, 1, 200, 80)`` on the device."""
        group: list[_Clip] = []
        pieces: list[torch.Tensor] = []
        rows = 0
        for idx, clip in enumerate(clips):
            wav = torch.as_tensor(clip)
            if wav.ndim != 1 or wav.numel() == 0:
                raise ValueError(
                    f"clip {idx}: expected non-empty mono audio (N,), got shape {tuple(wav.shape)}"
                )
            plan = self.plan(wav.numel())
            group.append(_Clip(idx, plan))
            pieces.append(self.segments(wav.float(), plan.num_chunks))
            rows += plan.num_chunks
            if rows >= self.batch_size:
                yield group, self._standardize_group(pieces, group)
                group, pieces, rows = [], [], 0
        if group:
            yield group, self._standardize_group(pieces, group)

    def _standardize_group(self, pieces: list[torch.Tensor], group: list[_Clip]) -> torch.Tensor:
        segments = self._to_device(torch.cat(pieces))
        return self.standardized_chunks(segments, [c.plan for c in group])

    # ---- encoder ----------------------------------------------------------------------------------------
    def _dtype_name(self) -> str:
        if self.dtype_name == "auto":
            return "bfloat16" if self.device.type == "cuda" else "float32"
        return self.dtype_name

    def _autocast(self) -> contextlib.AbstractContextManager:
        name = self._dtype_name()
        if name == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[name])

    def _encoder_fn(self) -> nn.Module:
        wanted = self.compile if self.compile is not None else self.device.type == "cuda"
        if not wanted:
            return self.encoder
        if self._compiled is None:
            self._compiled = torch.compile(self.encoder)  # recompiles once for a ragged last batch
        return self._compiled

    def encode_chunks(self, chunks: torch.Tensor) -> torch.Tensor:
        """``(b, 1, 200, 80)`` -> steps ``(b, 50, 5 D)`` float32, on the model's device."""
        with self._autocast():
            tokens = self._encoder_fn()(chunks)[:, 1:]  # cls dropped: (b, 250, D)
        return group_tokens(tokens.float(), self.layout, self.num_bands)

    # ---- the loop --------------------------------------------------------------------------------------
    def _run(
        self, clips: Iterable, want_steps: bool, to_host: bool
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Encode the chunks of all clips in shared batches; yield finished clips in input order."""
        open_clips: list[_Clip] = []  # clips with chunks not yet encoded or results not yet yielded
        queue: list[torch.Tensor] = []  # standardised chunks waiting for the encoder
        queued = 0
        totals: torch.Tensor | None = None  # (len(open_clips), 5D) running sums of kept steps
        pending_rows: list[_Clip] = []  # owner of every queued row, in order

        def encode_batch(size: int) -> None:
            nonlocal queue, queued, totals
            batch = torch.cat(queue) if len(queue) > 1 else queue[0]
            chunks, rest = batch[:size], batch[size:]
            queue, queued = ([rest] if len(rest) else []), queued - size
            owners = pending_rows[:size]
            del pending_rows[:size]
            steps = self.encode_chunks(chunks)  # (b, 50, 5D)
            keeps = []
            for clip in owners:  # steps of each row that survive trimming (host arithmetic)
                keeps.append(
                    max(
                        0,
                        min(
                            self.steps_per_chunk,
                            clip.plan.num_steps - clip.encoded * self.steps_per_chunk,
                        ),
                    )
                )
                clip.encoded += 1
            if want_steps:
                start = 0
                for clip, count in _runs(owners):
                    clip.parts.append(steps[start : start + count])
                    start += count
                return
            valid = (
                torch.arange(self.steps_per_chunk, device=steps.device)
                < self._small(keeps, steps.device)[:, None]
            )
            row_sums = (steps * valid[..., None]).sum(
                dim=1
            )  # (b, 5D): sum of each row's kept steps
            base = open_clips[0].index
            slots = self._small([c.index - base for c in owners], steps.device)
            totals = totals.index_add_(0, slots, row_sums)

        def finished() -> Iterator[tuple[int, torch.Tensor]]:
            nonlocal totals
            done = 0
            while (
                done < len(open_clips)
                and open_clips[done].encoded == open_clips[done].plan.num_chunks
            ):
                done += 1
            if not done:
                return
            clips_done = open_clips[:done]
            del open_clips[:done]
            if want_steps:
                results = [torch.cat(c.parts).flatten(0, 1)[: c.plan.num_steps] for c in clips_done]
            else:
                counts = self._small([c.plan.num_steps for c in clips_done], totals.device)[:, None]
                results = list(totals[:done] / counts)
                totals = totals[done:]
            if to_host:
                results = _to_host(results, clips_done)
            for clip, result in zip(clips_done, results, strict=True):
                yield clip.index, result

        for group, chunks in self._front_end(clips):
            open_clips += group
            for clip in group:
                pending_rows += [clip] * clip.plan.num_chunks
            if not want_steps:
                fresh = torch.zeros(len(group), self.scene_embedding_size, device=chunks.device)
                totals = fresh if totals is None else torch.cat([totals, fresh])
            queue.append(chunks)
            queued += len(chunks)
            while queued >= self.batch_size:
                encode_batch(self.batch_size)
                yield from finished()
        while queued:
            encode_batch(min(queued, self.batch_size))
            yield from finished()


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
