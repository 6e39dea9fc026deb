"""Exceptions raised by audiomaepp.

Every error says which input (file, key, argument) is wrong and why, so a long job can log it and
move on. They subclass ``ValueError`` where the cause is a bad value, so generic handlers work.
"""

from __future__ import annotations


class AudioMAEError(Exception):
    """Base class of every error raised on purpose by audiomaepp."""


# Why audio is invalid: ``InvalidAudioError.reason`` is one of these, so callers (``prepare``'s
# skip list) classify by type, never by searching the message, which starts with a user's path.
AUDIO_PROBLEMS = (
    "invalid",  # the generic default, for callers that do not say more
    "decode_error",
    "empty",
    "non_finite",
    "bad_shape",
    "bad_sample_rate",
)


class InvalidAudioError(AudioMAEError, ValueError):
    """Audio that cannot be used: empty, non-finite, wrong shape or wrong sample rate.

    ``reason`` says which (one of :data:`AUDIO_PROBLEMS`); the message names the input.
    """

    default_reason = "invalid"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason
        if self.reason not in AUDIO_PROBLEMS:
            raise ValueError(f"unknown audio problem {self.reason!r}; known: {AUDIO_PROBLEMS}")

    def __reduce__(self) -> tuple:  # keep ``reason`` across processes (pickling uses ``args``)
        return type(self), (str(self), self.reason)


class AudioDecodeError(InvalidAudioError):
    """A file that libsndfile cannot decode (corrupt, truncated, unknown format)."""

    default_reason = "decode_error"


class ShardFormatError(AudioMAEError, ValueError):
    """A shard or manifest this version cannot read: a newer format version, or a broken index."""


class CheckpointError(AudioMAEError, ValueError):
    """A checkpoint or model directory that does not fit the model.

    Missing, unexpected or mis-shaped keys.
    """


class ModelSpecError(CheckpointError):
    """A model name that is no model folder, Hub repo id (owner/name) or ``random:<preset>``."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint that asks to import or call something outside the allow-list."""


class NonFiniteLossError(AudioMAEError, RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""
