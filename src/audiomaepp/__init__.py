"""audiomaepp: AudioMAE++ masked audio autoencoders in PyTorch.

Public API::

    from audiomaepp import AudioMAEConfig, AudioMAE
    cfg = AudioMAEConfig.preset("base", block="vanilla")
    model = AudioMAE(cfg)
    # x: (B, 1, 200, 80) standardised log-mel
    out = model(x)            # -> out.loss, out.pred, out.mask
    tokens = model.encode(x)  # (B, 250, D)
"""

from .errors import AudioMAEError, CheckpointError, InvalidAudioError, UnsafeCheckpointError

__version__ = "0.1.0"

__all__ = [
    "AudioMAEConfig",
    "AudioMAE",
    "MAEOutput",
    "AudioMAEError",
    "CheckpointError",
    "InvalidAudioError",
    "UnsafeCheckpointError",
    "__version__",
]


def __getattr__(name: str):  # lazy: ``import audiomaepp`` stays cheap for the CLI and HEAR tools
    if name in ("AudioMAEConfig", "AudioMAE", "MAEOutput"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'audiomaepp' has no attribute {name!r}")
