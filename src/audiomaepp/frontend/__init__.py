"""Audio front end: 16 kHz waveform -> log-mel ``(B, 1, T, 80)``, standardisation, crops."""

from .logmel import (
    SAMPLE_RATE,
    FrontendConfig,
    LogMelFrontend,
    check_waveform,
    log_mel,
    mel_filterbank,
    num_frames,
)
from .transforms import (
    INPUT_FRAMES,
    STD_EPS,
    clip_stats,
    crop_or_tile,
    crop_start,
    random_crop,
    standardize,
    tile_to,
)

__all__ = [
    "SAMPLE_RATE",
    "INPUT_FRAMES",
    "STD_EPS",
    "FrontendConfig",
    "LogMelFrontend",
    "check_waveform",
    "log_mel",
    "mel_filterbank",
    "num_frames",
    "standardize",
    "clip_stats",
    "tile_to",
    "random_crop",
    "crop_start",
    "crop_or_tile",
]
