"""Reading audio files: any format libsndfile decodes -> mono float32 at 16 kHz (soxr resampling).

One place for file decoding, used by data preparation, the folder loader, ``embed`` and
``evaluate``. Every failure is an :class:`~audiomaepp.errors.InvalidAudioError` naming the file.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioDecodeError, InvalidAudioError
from .frontend import SAMPLE_RATE

__all__ = ["AUDIO_EXTENSIONS", "load_audio", "to_mono_16k", "find_audio_files"]

# Extensions we look for when given a folder; libsndfile >= 1.1 decodes all of these.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")


def to_mono_16k(audio: np.ndarray, sample_rate: int, what: str = "audio") -> np.ndarray:
    """``(N,)`` or ``(N, C)`` samples at any rate -> ``(N',)`` float32 mono at 16 kHz."""
    audio = np.asarray(audio)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)  # mix down: the average keeps the level of correlated channels
    elif audio.ndim != 1:
        raise InvalidAudioError(
            f"{what}: expected (samples,) or (samples, channels), got {audio.shape}"
        )
    audio = audio.astype(np.float32, copy=False)
    if audio.size == 0:
        raise InvalidAudioError(f"{what}: empty audio (0 samples)")
    if not np.isfinite(audio).all():
        raise InvalidAudioError(f"{what}: contains NaN or infinite samples")
    if sample_rate <= 0:
        raise InvalidAudioError(f"{what}: invalid sample rate {sample_rate}")
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
