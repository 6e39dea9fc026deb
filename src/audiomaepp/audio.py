"""Reading audio files: any format libsndfile decodes -> mono float32 at 16 kHz (soxr resampling).

One place for file decoding, used by data preparation, the folder loader, ``embed`` and
``evaluate``: a whole file (:func:`load_audio`), a long file piece by piece (:func:`iter_pieces`),
or one segment of it (:func:`load_segment`), so long recordings never need their whole length in
memory. Every failure is an :class:`~audiomaepp.errors.InvalidAudioError` naming the file, with a
``reason`` (``empty``, ``non_finite``, ...) to classify it by.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioDecodeError, InvalidAudioError
from .frontend import SAMPLE_RATE

__all__ = [
    "AUDIO_EXTENSIONS",
    "load_audio",
    "to_mono_16k",
    "find_audio_files",
    "duration_s",
    "iter_pieces",
    "num_segments",
    "load_segment",
]

# Extensions we look for when given a folder; libsndfile >= 1.1 decodes all of these.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")


def to_mono_16k(audio: np.ndarray, sample_rate: int, what: str = "audio") -> np.ndarray:
    """``(N,)`` or ``(N, C)`` samples at any rate -> ``(N',)`` float32 mono at 16 kHz."""
    audio = np.asarray(audio)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)  # mix down: the average keeps the level of correlated channels
    elif audio.ndim != 1:
        raise InvalidAudioError(
            f"{what}: expected (samples,) or (samples, channels), got {audio.shape}", "bad_shape"
        )
    audio = audio.astype(np.float32, copy=False)
    if audio.size == 0:
        raise InvalidAudioError(f"{what}: empty audio (0 samples)", "empty")
    if not np.isfinite(audio).all():
        raise InvalidAudioError(f"{what}: contains NaN or infinite samples", "non_finite")
    if sample_rate <= 0:
        raise InvalidAudioError(f"{what}: invalid sample rate {sample_rate}", "bad_sample_rate")
    if sample_rate != SAMPLE_RATE:
        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return audio


def load_audio(path: str | Path) -> np.ndarray:
    """Decode ``path`` and return mono float32 samples at 16 kHz, shape ``(N,)``.

    Raises :class:`AudioDecodeError` if libsndfile cannot read it and :class:`InvalidAudioError`
    if it is empty or non-finite; the message always starts with the file name.
    """
    path = Path(path)
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    except Exception as exc:  # libsndfile raises several types (LibsndfileError, RuntimeError, ...)
        raise AudioDecodeError(f"{path}: cannot decode audio ({exc})") from exc
    return to_mono_16k(audio, sr, what=str(path))


def find_audio_files(inputs: list[str | Path]) -> list[Path]:
    """Expand folders (recursively), globs and ``.txt`` file lists into a sorted list of files."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += [
                f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file()
            ]
        elif p.suffix.lower() == ".txt" and p.is_file():
            lines = p.read_text().splitlines()
            found += [Path(s.strip()) for s in lines if s.strip() and not s.startswith("#")]
        elif any(ch in str(item) for ch in "*?["):
            found += [Path(f) for f in glob.glob(str(item), recursive=True) if Path(f).is_file()]
        else:
            found.append(p)  # a plain file; a missing one is reported when it is read
    return sorted(dict.fromkeys(found))


def duration_s(path: str | Path) -> float | None:
    """The file's duration in seconds from its header; None when the header cannot be read."""
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate if info.samplerate > 0 else None
    except Exception:  # an unreadable header is reported by the decode that follows
        return None


def iter_pieces(path: str | Path, piece_s: float) -> Iterator[np.ndarray]:
    """Mono float32 16 kHz samples of ``path`` in consecutive pieces of ``piece_s`` seconds.

    Reads and resamples one piece at a time (a streaming resampler keeps the pieces seamless), so
    memory stays at a few pieces whatever the file's length; the last piece may be shorter.
    Samples are not checked (callers check each piece); libsndfile / soxr errors propagate.
    """
    with sf.SoundFile(str(path)) as f:
        rate, size = f.samplerate, round(piece_s * SAMPLE_RATE)
        stream = None
        if rate != SAMPLE_RATE:
            stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        block, pending = max(1, round(piece_s * rate)), np.zeros(0, np.float32)
        while True:
            x = f.read(block, dtype="float32", always_2d=True).mean(axis=1)  # (n,) mono
            last = len(x) < block
            if stream is not None:
                x = stream.resample_chunk(x, last=last)
            pending = np.concatenate([pending, x.astype(np.float32, copy=False)])
            while len(pending) >= size:
                yield pending[:size]
                pending = pending[size:]
            if last:
                break
        if len(pending):
            yield pending


def num_segments(seconds: float, segment_s: float) -> int:
    """Pieces of ``segment_s`` seconds in a file of ``seconds`` (the last one may be shorter)."""
    return max(1, math.ceil(round(seconds * SAMPLE_RATE) / round(segment_s * SAMPLE_RATE)))


# Source samples decoded on each side of a segment so the resampler's filter sees real signal, not
# an edge: soxr's HQ filter is a few ms long, 50 ms is ample.
_RESAMPLE_CONTEXT_S = 0.05


def load_segment(path: str | Path, index: int, segment_s: float) -> np.ndarray:
    """Samples ``[index * segment_s, (index + 1) * segment_s)`` of ``path``, mono float32 16 kHz.

    Seeks and decodes only that stretch (plus 50 ms of resampler context on each side), so the
    memory needed does not depend on the file's length. At 16 kHz the result equals the piece
    :func:`iter_pieces` yields; resampled files may differ from it by the resampler's rounding.
    Raises like :func:`load_audio`.
    """
    path = Path(path)
    size = round(segment_s * SAMPLE_RATE)  # output samples per segment
    try:
        with sf.SoundFile(str(path)) as f:
            rate, total = f.samplerate, f.frames
            start, stop = index * size * rate / SAMPLE_RATE, (index + 1) * size * rate / SAMPLE_RATE
            context = round(_RESAMPLE_CONTEXT_S * rate) if rate != SAMPLE_RATE else 0
            lo, hi = max(0, round(start) - context), min(total, round(stop) + context)
            if lo >= hi:
                raise InvalidAudioError(f"{path}: segment {index} is past the end", "empty")
            f.seek(lo)
            audio = f.read(hi - lo, dtype="float32", always_2d=True)  # (n, C)
    except InvalidAudioError:
        raise
    except Exception as exc:  # libsndfile raises several types (LibsndfileError, RuntimeError, ...)
        raise AudioDecodeError(f"{path}: cannot decode audio ({exc})") from exc
    audio = to_mono_16k(audio, rate, what=f"{path} (segment {index})")
    skip = round((round(start) - lo) * SAMPLE_RATE / rate)  # the leading context, at 16 kHz
    return audio[skip : skip + size]
