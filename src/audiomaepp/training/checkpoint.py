"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a folder ``RUN_DIR/checkpoints/step_NNNNNNNN/``:

* ``model.safetensors`` + ``config.json`` — written by ``save_pretrained``, so every checkpoint
  is also a model directory that ``AudioMAE.from_pretrained`` loads;
* ``optimizer.safetensors`` — AdamW state tensors, keyed
  ``"{param name}/{exp_avg|exp_avg_sq|step}"``;
* ``rng.safetensors`` — RNG states as uint8 tensors (torch CPU, CUDA, numpy MT19937, python);
* ``state.json`` — step, loader position, param-group settings, grad-scaler state, counters,
  the scalar parts of the RNG states and the run's configuration.

The folder is written under a temporary name and renamed in one step, so a folder named
``step_*`` is always complete; a crash mid-write leaves a ``.tmp-*`` folder that the next start
removes. Loading never executes code.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..fileio import atomic_write_bytes, fsync_dir
from ..model.io import check_state_dict
from .optim import optimizer_param_names
from .state import TrainState

FORMAT = "audiomaepp-train/1"
CHECKPOINTS = "checkpoints"
STATE_NAME = "state.json"
OPTIM_NAME = "optimizer.safetensors"
RNG_NAME = "rng.safetensors"
MODEL_NAME = "model.safetensors"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_IMPL_FLAGS = ("fused", "foreach", "capturable", "differentiable")  # follow the current optimizer


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


# ---- finding checkpoints -------------------------------------------------------------------------
def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of ``run_dir``, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / STATE_NAME).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``None`` -> no resume; ``"auto"`` -> latest in ``run_dir`` (None if there is none);
    a checkpoint folder -> itself; a run folder -> its latest checkpoint."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if (path / STATE_NAME).is_file():
        return path
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise CheckpointError(
            f"--resume {resume}: not a checkpoint folder nor a run folder with checkpoints"
        )
    return latest


def clean_partial(run_dir: str | Path) -> None:
    """Remove ``.tmp-*`` folders left by a save that was killed half-way."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (0 keeps all); returns the deleted."""
    ckpts = list_checkpoints(run_dir)
    doomed = ckpts[:-keep_last] if keep_last > 0 else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


# ---- RNG states ----------------------------------------------------------------------------------
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every global RNG state: uint8 tensors plus their scalar parts (JSON)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    tensors = {
        "torch_cpu": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(
            np.ascontiguousarray(np_state[1], dtype=np.uint32).view(np.uint8).copy()
        ),
        "python_state": torch.from_numpy(
            np.array(py_state[1], dtype=np.uint32).view(np.uint8).copy()
        ),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    meta = {
        "numpy": {
            "algorithm": np_state[0],
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "gauss_next": py_state[2]},
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (the CUDA state only when a GPU is in use)."""
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    keys = tensors["numpy_keys"].numpy().view(np.uint32)
    n = meta["numpy"]
    np.random.set_state((n["algorithm"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    words = tuple(int(w) for w in tensors["python_state"].numpy().view(np.uint32))
    random.setstate((meta["python"]["version"], words, meta["python"]["gauss_next"]))


# ---- optimizer state -----------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def flatten_optimizer(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)``: per-parameter state keyed by parameter name, groups as JSON."""
    sd = optimizer.state_dict()
    names = optimizer_param_names(optimizer)
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            flat = f"{names[idx]}/{key}"
            if isinstance(value, torch.Tensor):
                tensors[flat] = value.detach().cpu().contiguous()
            else:
                scalars[flat] = value
    groups = [{k: _jsonable(v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"names": names, "param_groups": groups, "scalars": scalars}


def load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Load what :func:`flatten_optimizer` wrote into ``optimizer`` (same parameters and order)."""
    names = optimizer_param_names(optimizer)
    if meta["names"] != names:
        missing = sorted(set(names) - set(meta["names"]))
        extra = sorted(set(meta["names"]) - set(names))
        raise CheckpointError(
            "optimizer parameters differ from the checkpoint's "
            f"(missing {missing}, unexpected {extra})"
        )
    index = {name: i for i, name in enumerate(names)}
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        name, key = flat.rsplit("/", 1)
        state.setdefault(index[name], {})[key] = value
    groups = []
    for saved, current in zip(meta["param_groups"], optimizer.param_groups, strict=True):
        group = dict(saved)
        group["betas"] = tuple(group["betas"])
        group.update({k: current[k] for k in _IMPL_FLAGS if k in current})
        groups.append(group)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---- save / load ---------------------------------------------------------------------------------
def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
    keep_last: int = 0,
) -> Path:
    """Write the full training state of ``step`` atomically; prune to ``keep_last``.

    Returns the folder.

    ``model`` is the bare :class:`AudioMAE` (not the DDP / compiled wrapper); ``state`` holds the
    JSON-able rest (loader position, counters, config). Saving a step twice keeps the first.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    if (final / STATE_NAME).is_file():
        return final
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    try:
        _write_checkpoint(tmp, step, model, optimizer, state, scaler)
        _fsync_tree(tmp)
        if final.exists():  # an incomplete folder of that name (no state.json): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)  # the rename itself must reach the disk before we prune older ones
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep_last)
    return final


def _write_checkpoint(
    folder: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    scaler: torch.amp.GradScaler | None,
) -> None:
    model.save_pretrained(
        folder
    )  # model.safetensors + config.json (+ labels.json for a classifier)
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    save_file(opt_tensors, str(folder / OPTIM_NAME), metadata={"format": FORMAT})
    rng_tensors, rng_meta = capture_rng()
    save_file(rng_tensors, str(folder / RNG_NAME), metadata={"format": FORMAT})
    doc = {
        "format": FORMAT,
        "step": step,
        **state,
        "optimizer": opt_meta,
        "rng": rng_meta,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    atomic_write_bytes(folder / STATE_NAME, json.dumps(doc, indent=1, sort_keys=True).encode())


def read_state(path: str | Path) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint folder."""
    file = Path(path) / STATE_NAME
    try:
        doc = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: cannot read checkpoint state ({exc})") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{file}: format {doc.get('format')!r}, expected {FORMAT!r}")
    for key, kind in (("optimizer", dict), ("rng", dict)):
        if not isinstance(doc.get(key), kind):
            raise CheckpointError(f"{file}: field {key!r} is missing or not an object")
    return doc


def read_train_state(path: str | Path) -> TrainState:
    """The checked :class:`TrainState` of a checkpoint folder (errors name the file and field)."""
    return TrainState.from_json(read_state(path), str(Path(path) / STATE_NAME))


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{file}: cannot read safetensors file ({exc})") from exc


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    restore_rngs: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint folder into ``model`` (and ``optimizer``, ``scaler``, global RNGs).

    Returns the ``state.json`` document (step, loader position, counters, config).
    """
    path = Path(path)
    doc = read_state(path)
    weights = _load_tensors(path / MODEL_NAME)
    check_state_dict(model, weights, str(path / MODEL_NAME))
    model.load_state_dict(weights)
    try:
        if optimizer is not None:
            load_optimizer(optimizer, _load_tensors(path / OPTIM_NAME), doc["optimizer"])
        if scaler is not None and scaler.is_enabled() and doc.get("scaler"):
            scaler.load_state_dict(doc["scaler"])
        if restore_rngs:
            restore_rng(_load_tensors(path / RNG_NAME), doc["rng"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        # a state.json edited by hand or from another version: name the file, not a bare KeyError
        raise CheckpointError(
            f"{path / STATE_NAME}: malformed optimizer / scaler / RNG state "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return doc
