"""Model directories: ``model.safetensors`` + ``config.json``. Loading never executes code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..fileio import atomic_path, atomic_write_bytes
from .config import AudioMAEConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "audiomaepp-model/1"  # bumped if the key layout ever changes


def save_pretrained(
    model: torch.nn.Module,
    directory: str | Path,
    extra_json: dict[str, Any] | None = None,
    fmt: str = FORMAT,
) -> Path:
    """Write ``model``'s weights and config to ``directory`` (created if needed).

    ``config.json`` names the architecture (the model's class, e.g. ``AudioMAE`` or
    ``AudioClassifier``); ``extra_json`` maps further file names to JSON documents written beside
    (a classifier's ``labels.json``); ``fmt`` is the layout tag its loader checks.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": fmt})
    meta = {"format": fmt, "architecture": type(model).__name__, "config": model.config.to_dict()}
    atomic_write_bytes(directory / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True).encode())
    for name, doc in (extra_json or {}).items():
        atomic_write_bytes(directory / name, json.dumps(doc, indent=1).encode())
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


def _shape_problems(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``found`` against ``expected`` (key -> shape)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k} {found[k]} vs model {expected[k]}"
        for k in sorted(set(found) & set(expected))
        if found[k] != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped key(s): {_listing(shapes, 4)}")
    return problems


def _raise_unless_fits(problems: list[str], source: str) -> None:
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model config ({'; '.join(problems)}); "
            "check the preset / config it was converted or saved with"
        )


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming the missing, unexpected or mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _raise_unless_fits(
        _shape_problems(expected, {k: tuple(v.shape) for k, v in state.items()}), source
    )


def check_weights_file(cfg: AudioMAEConfig, weights: str | Path) -> None:
    """Compare the tensor shapes in a safetensors header with ``cfg``'s model, allocating nothing.

    The model is built on the meta device (shapes only) and the file's header is read without its
    data, so a config or a weights file that does not fit fails before any real allocation.
    """
    from .mae import AudioMAE

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in AudioMAE(cfg).state_dict().items()}
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights}: cannot read safetensors file ({exc})") from exc
    _raise_unless_fits(_shape_problems(expected, found), str(weights))


def load_pretrained(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Build the model of ``directory/config.json`` and load ``model.safetensors`` into it."""
    from .mae import AudioMAE

    directory = Path(directory)
    cfg = read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}")
    check_weights_file(cfg, weights)  # before allocating the model or reading the weights
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types for corrupt data
        raise CheckpointError(f"{weights}: cannot read safetensors file ({exc})") from exc
    model = AudioMAE(cfg)
    check_state_dict(model, state, str(weights))
    model.load_state_dict(state)
    return model.to(map_location).eval()
