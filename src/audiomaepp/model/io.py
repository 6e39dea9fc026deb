"""Model directories: ``model.safetensors`` + ``config.json``. Loading never executes code."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..fileio import atomic_path, atomic_write_bytes
from .config import AudioMAEConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "audiomaepp-model/1"  # bumped if the key layout ever changes


def save_pretrained(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write ``model``'s weights and config to ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "architecture": "AudioMAE", "config": model.config.to_dict()}
    atomic_write_bytes(directory / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True).encode())
    return directory


def read_config(directory: str | Path) -> AudioMAEConfig:
    """The :class:`AudioMAEConfig` stored in a model directory."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a model directory (no {CONFIG_NAME})")
    try:
        meta = json.loads(path.read_text())
        return AudioMAEConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model config ({exc})") from exc


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown}, ... ({len(items) - limit} more)" if len(items) > limit else shown


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming the missing, unexpected or mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped key(s): {_listing(shapes, 4)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model config ({'; '.join(problems)}); "
            "check the preset / config it was converted or saved with"
        )


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model of ``directory/config.json`` and load ``model.safetensors`` into it."""
    from .mae import AudioMAE

    directory = Path(directory)
    cfg = read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights}: cannot read safetensors file ({exc})") from exc
    model = AudioMAE(cfg)
    check_state_dict(model, state, str(weights))
    model.load_state_dict(state)
    return model.to(map_location).eval()
