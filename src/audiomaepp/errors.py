"""Exceptions raised by audiomaepp.

Every error says which input (file, key, argument) is wrong and why, so a long job can log it and
move on. They subclass ``ValueError`` where the cause is a bad value, so generic handlers still work.
"""

from __future__ import annotations


class AudioMAEError(Exception):
    """Base class of every error raised on purpose by audiomaepp."""


class InvalidAudioError(AudioMAEError, ValueError):
    """Audio that cannot be used: empty, non-finite, wrong shape or wrong sample rate."""


class AudioDecodeError(InvalidAudioError):
    """A file that libsndfile cannot decode (corrupt, truncated, unknown format)."""


class CheckpointError(AudioMAEError, ValueError):
    """A checkpoint or model directory that does not fit the model: missing, unexpected or mis-shaped keys."""


class ModelSpecError(CheckpointError):
    """A model name that is no model folder, Hub repo id (owner/name) or ``random:<preset>``."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint that asks to import or call something outside the allow-list."""


class NonFiniteLossError(AudioMAEError, RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""
