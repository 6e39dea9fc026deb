"""Model directories: ``model.safetensors`` + ``config.json`` (+ ``labels.json`` for a classifier).

One writer (:func:`save_pretrained`) and one reader (:func:`load_model_dir`) for encoders and
classifiers; loading never executes code and checks the weights' header before allocating.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..fileio import atomic_path, atomic_write_bytes
from .config import AudioMAEConfig
from .hub import resolve_model_dir

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# The layout tags of the two kinds of model directory (bumped if a key layout ever changes); the
# one reader below refuses a folder of the wrong kind by its tag.
FORMAT = "audiomaepp-model/1"  # an AudioMAE (encoder + decoder)
CLASSIFIER_FORMAT = "audiomaepp-classifier/1"  # a fine-tuned AudioClassifier (+ labels.json)


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


def read_meta(directory: str | Path, fmt: str = FORMAT) -> dict[str, Any]:
    """``config.json`` of a local model directory, checked to hold the layout ``fmt``.

    A folder of another kind (an encoder where a classifier is wanted, or the reverse) is refused
    here, naming what it holds, before its config is parsed or any weight is read.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a model directory (no {CONFIG_NAME})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid model config ({exc})") from exc
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{path}: invalid model config (no 'config' object)")
    found = meta.get("format")
    if found != fmt:
        holds = f" ({meta['architecture']})" if "architecture" in meta else ""
        raise CheckpointError(
            f"{path}: format {found!r}{holds}, expected {fmt!r}{_KIND_HINTS.get(found, '')}"
        )
    return meta


# what to do with a folder of the other kind, by its format tag
_KIND_HINTS = {
    FORMAT: " (an encoder: fine-tune it with `audiomaepp finetune --model DIR` first)",
    CLASSIFIER_FORMAT: (
        " (a fine-tuned classifier: load it with AudioClassifier.from_pretrained or "
        "`audiomaepp predict`)"
    ),
}


def read_config(directory: str | Path) -> AudioMAEConfig:
    """The :class:`AudioMAEConfig` stored in an encoder's model directory."""
    meta = read_meta(directory)
    try:
        return AudioMAEConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{Path(directory) / CONFIG_NAME}: invalid model config ({exc})"
        ) from exc


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


def check_weights_file(expected: torch.nn.Module, weights: str | Path) -> None:
    """Compare the tensor shapes in a safetensors header with ``expected``'s, reading no data.

    ``expected`` is built on the meta device (shapes only), so a config or a weights file that
    does not fit fails before any real allocation.
    """
    shapes = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights}: cannot read safetensors file ({exc})") from exc
    _raise_unless_fits(_shape_problems(shapes, found), str(weights))


M = TypeVar("M", bound=torch.nn.Module)


def load_model_dir(
    name_or_path: str | Path,
    build: Callable[[dict[str, Any], Path], M],
    fmt: str = FORMAT,
    map_location: str | torch.device = "cpu",
) -> M:
    """The one reader of model directories, for encoders and classifiers alike.

    ``name_or_path``: a folder or a Hub repo id (fetched via :mod:`.hub`). ``build(config, folder)``
    makes the untrained model from ``config.json``'s ``config`` (a classifier reads its
    ``labels.json`` from ``folder``). Order: the format tag is checked, the model is built on the
    meta device and compared with the safetensors header, and only then are the weights read and
    the real model built. Never executes code from the folder.
    """
    directory = resolve_model_dir(name_or_path)
    meta = read_meta(directory, fmt)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}")
    with torch.device("meta"):
        skeleton = _build(build, meta, directory)
    check_weights_file(skeleton, weights)  # before allocating the model or reading the weights
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types for corrupt data
        raise CheckpointError(f"{weights}: cannot read safetensors file ({exc})") from exc
    model = _build(build, meta, directory)
    check_state_dict(model, state, str(weights))
    model.load_state_dict(state)
    return model.to(map_location).eval()


def _build(build: Callable[[dict[str, Any], Path], M], meta: dict[str, Any], directory: Path) -> M:
    try:
        return build(meta["config"], directory)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:  # a field missing, mistyped or out of range
        raise CheckpointError(f"{directory / CONFIG_NAME}: invalid model config ({exc})") from exc
