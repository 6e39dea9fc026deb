"""Long clips in memory that does not grow with their length: standardised 2-s chunks, streamed.

A clip's standardisation needs the mean and std of its whole log-mel, so a long clip is read
twice: pass 1 (:func:`clip_stats`) computes the log-mel chunk by chunk and merges per-piece
``(count, mean, M2)`` in float64 (Chan et al.'s pairwise update: no sum-of-squares cancellation);
pass 2 (:func:`standardized_chunks`) computes it again and standardises it. The STFT is ~1-5 % of
the encoder's time, so the second pass costs little; what is held at any time is one piece of
``per`` chunks, never the clip.

Samples come from a :class:`SampleSource`: an array already in memory (:class:`ArraySource`,
sliced, never copied whole) or a file decoded block by block (:class:`FileSource`, decoded twice).

Chunk ``k`` covers frames ``200 k ... 200 k + 199`` of the centred STFT, i.e. samples
``[hop * 200 k - n_fft / 2, ...)`` of the clip with the STFT's reflect padding at both edges: the
same samples :meth:`Embedder.segments` cuts from a whole clip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..frontend import INPUT_FRAMES, STD_EPS, LogMelFrontend, num_frames

__all__ = [
    "SampleSource",
    "ArraySource",
    "FileSource",
    "ClipStats",
    "clip_stats",
    "standardized_chunks",
]

BLOCK_SAMPLES = 1 << 16  # samples per slice of an in-memory clip (4 s at 16 kHz)
FILE_BLOCK_SECONDS = 4.0  # decoded per read of a streamed file
STFT_CHUNKS = 16  # chunks per STFT call: ~5 MB of complex spectrum instead of 20 MB for 64


def _libc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere.

    Each piece allocates and frees the same ~20 MB of STFT temporaries; glibc then serves them
    from its heap (its mmap threshold adapts upwards) and keeps up to ~100 MB of freed heap
    resident (measured: RSS wandering 348-443 MB over a 20-minute file, a flat 323 MB with a trim
    after each piece). Trimming once per piece of 64 chunks costs well under a millisecond."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return lambda: None
    return lambda: trim(0)


_release_free_memory = _libc_trim()


class SampleSource(Protocol):
    """Mono float32 16 kHz samples of one clip, readable more than once, block by block."""

    def blocks(self) -> Iterator[np.ndarray]: ...


@dataclass(frozen=True)
class ArraySource:
    """A clip already in memory, ``(N,)`` numpy or torch (read in slices)."""

    samples: np.ndarray | torch.Tensor

    def blocks(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.samples), BLOCK_SAMPLES):
            part = self.samples[start : start + BLOCK_SAMPLES]
            yield part.detach().cpu().float().numpy() if torch.is_tensor(part) else part


@dataclass
class FileSource:
    """A file decoded block by block each time it is read (``audiomaepp.audio.iter_pieces``).

    Small and picklable: decoding workers hand it back for files too long to decode whole.
    ``num_samples`` is filled in by :func:`clip_stats`."""

    path: Path
    num_samples: int | None = None

    def blocks(self) -> Iterator[np.ndarray]:
        from ..audio import iter_pieces
        from ..errors import AudioDecodeError, InvalidAudioError

        total = 0
        pieces = iter_pieces(self.path, FILE_BLOCK_SECONDS)
        while True:
            try:
                block = next(pieces, None)
            except Exception as exc:  # libsndfile / soxr raise several types
                raise AudioDecodeError(f"{self.path}: cannot decode audio ({exc})") from exc
            if block is None:
                break
            if not np.isfinite(block).all():
                raise InvalidAudioError(f"{self.path}: contains NaN or infinite samples")
            total += len(block)
            yield block
        if total == 0:
            raise InvalidAudioError(f"{self.path}: empty audio (0 samples)")


@dataclass
class ClipStats:
    """What pass 1 learns about a clip: its length and its standardisation."""

    num_samples: int
    frames: int
    mean: float
    scale: float  # 1 / (unbiased std + STD_EPS)


@dataclass
class _Moments:
    """Running ``(count, mean, M2)`` in float64, merged piece by piece (Chan et al. 1979)."""

    n: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: torch.Tensor) -> None:
        """``values``: the real log-mel entries of one piece (any shape)."""
        v = values.double()
        n_b = float(v.numel())
        if n_b == 0:
            return
        mean_b = float(v.mean())
        m2_b = float((v - mean_b).pow(2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n


@dataclass
class _Segmenter:
    """Cuts the samples under each chunk from a stream of blocks, as they arrive.

    ``half`` = ``n_fft // 2`` reflect padding, ``segment`` samples per chunk (32 240), ``stride``
    between chunks (32 000). ``chunks_for(num_samples)`` says how many chunks the clip has."""

    half: int
    segment: int
    stride: int
    chunks_for: Callable[[int], int]
    num_samples: int = 0
    _buf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    _start: int = 0  # padded-sample index of _buf[0]
    _head: list[np.ndarray] | None = field(default_factory=list)  # until the reflect head is known
    _next: int = 0  # next chunk to cut

    def cut(self, blocks: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, bool]]:
        """Yield ``(segments (c, segment) float32, last)``; ``last`` pieces may hold padding."""
        for block in blocks:
            self.num_samples += len(block)
            self._append(np.asarray(block, dtype=np.float32))
            ready = self._ready()
            if len(ready):
                yield ready, False
        yield self._finish(), True

    def _append(self, block: np.ndarray) -> None:
        if self._head is not None:
            self._head.append(block)
            wav = np.concatenate(self._head)
            if len(wav) <= self.half:  # reflect padding needs more than half a window
                return
            self._head = None
            block = np.concatenate([wav[1 : self.half + 1][::-1], wav])
        self._buf = np.concatenate([self._buf, block])

    def _ready(self, end: int | None = None) -> np.ndarray:
        """Every next chunk whose samples are all in the buffer (up to chunk ``end``)."""
        have = self._start + len(self._buf)
        count = (have - self.segment) // self.stride + 1 - self._next if have >= self.segment else 0
        if end is not None:
            count = min(count, end - self._next)
        if count <= 0:
            return np.zeros((0, self.segment), np.float32)
        offset = self._next * self.stride - self._start
        windows = np.lib.stride_tricks.sliding_window_view(self._buf[offset:], self.segment)
        out = windows[: (count - 1) * self.stride + 1 : self.stride].copy()
        self._next += count
        drop = self._next * self.stride - self._start  # samples no later chunk needs
        self._buf, self._start = self._buf[drop:].copy(), self._start + drop
        return out

    def _finish(self) -> np.ndarray:
        if self._head is not None:  # a clip of at most half a window: zeros, then reflect
            wav = np.concatenate(self._head) if self._head else np.zeros(0, np.float32)
            wav = np.pad(wav, (0, self.half + 1 - len(wav)))
            self._head, self._buf = None, np.concatenate([wav[1 : self.half + 1][::-1], wav])
        tail = self._buf[-2 : -self.half - 2 : -1]  # reflect padding at the end
        total = self.chunks_for(self.num_samples)
        need = self.stride * (total - 1) + self.segment - self._start
        self._buf = np.concatenate([self._buf, tail])
        self._buf = np.pad(self._buf, (0, max(0, need - len(self._buf))))
        return self._ready(end=total)


def _segmenter(frontend: LogMelFrontend, chunks_for: Callable[[int], int]) -> _Segmenter:
    cfg = frontend.cfg
    segment = cfg.n_fft + cfg.hop_length * (INPUT_FRAMES - 1)
    return _Segmenter(cfg.n_fft // 2, segment, cfg.hop_length * INPUT_FRAMES, chunks_for)


def _pieces(
    source: SampleSource,
    frontend: LogMelFrontend,
    chunks_for: Callable[[int], int],
    per: int,
) -> Iterator[tuple[torch.Tensor, int, bool, _Segmenter]]:
    """Log-mel of ``per`` chunks at a time: ``(lms (c, 200, 80), first chunk, ended, segmenter)``;
    ``ended``: the source is read to its end (the clip's length is known; the piece may hold
    padding frames). Pieces before that hold only real frames."""
    seg = _segmenter(frontend, chunks_for)
    pending: list[np.ndarray] = []
    rows = first = 0
    for part, last in seg.cut(source.blocks()):
        pending.append(part)
        rows += len(part)
        while rows >= per or (last and rows):
            flat = np.concatenate(pending)
            take, rest = flat[:per], flat[per:]
            pending, rows = ([rest] if len(rest) else []), len(rest)
            device = frontend.window.device
            segments = torch.from_numpy(take).to(device)
            # STFT in groups of STFT_CHUNKS: its complex temporaries are 5x the log-mel's size
            lms = torch.cat([frontend.frames(s) for s in segments.split(STFT_CHUNKS)])
            yield lms, first, last, seg
            first += len(take)
            del lms
            _release_free_memory()
    if not first:  # nothing at all (cannot happen for a non-empty clip)
        raise ValueError("empty audio source")


def _real_frames(lms: torch.Tensor, first: int, frames: int | None) -> torch.Tensor:
    """``(c, 200, 1)`` mask: 1 on frames inside the clip (``frames`` None: all of them)."""
    index = first * INPUT_FRAMES + torch.arange(lms.shape[0] * INPUT_FRAMES, device=lms.device)
    real = index < frames if frames is not None else torch.ones_like(index, dtype=torch.bool)
    return real.reshape(lms.shape[0], INPUT_FRAMES, 1)


def clip_stats(
    source: SampleSource,
    frontend: LogMelFrontend,
    chunks_for: Callable[[int], int],
    per: int = 64,
) -> ClipStats:
    """Pass 1: the clip's length and the mean and unbiased std of its whole log-mel.

    Raises what reading the source raises (:class:`~audiomaepp.errors.InvalidAudioError`)."""
    moments = _Moments()
    seg: _Segmenter | None = None
    for lms, first, last, seg in _pieces(source, frontend, chunks_for, per):
        frames = num_frames(seg.num_samples, frontend.cfg.hop_length) if last else None
        moments.add(lms.masked_select(_real_frames(lms, first, frames)))
    assert seg is not None
    var = moments.m2 / max(moments.n - 1, 1)
    n = seg.num_samples
    if isinstance(source, FileSource):
        source.num_samples = n
    frames = num_frames(n, frontend.cfg.hop_length)
    return ClipStats(n, frames, moments.mean, 1.0 / (var**0.5 + STD_EPS))


def standardized_chunks(
    source: SampleSource,
    stats: ClipStats,
    frontend: LogMelFrontend,
    chunks_for: Callable[[int], int],
    per: int = 64,
) -> Iterator[torch.Tensor]:
    """Pass 2: the clip's chunks ``(c <= per, 200, 80)``, standardised, padding frames zero."""
    for lms, first, last, _ in _pieces(source, frontend, chunks_for, per):
        real = _real_frames(lms, first, stats.frames if last else None).to(lms.dtype)
        yield (lms - stats.mean) * real * stats.scale
