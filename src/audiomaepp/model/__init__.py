"""AudioMAE / AudioMAE++ model: config, layers, masked autoencoder, persistence, release import."""

from .config import PRESETS, AudioMAEConfig
from .mae import AudioMAE, MAEOutput, patchify, random_masking, unpatchify

__all__ = [
    "PRESETS",
    "AudioMAEConfig",
    "AudioMAE",
    "MAEOutput",
    "patchify",
    "unpatchify",
    "random_masking",
]
