"""TrainState: the JSON part of a training checkpoint, how it is read back, and what must match.

A checkpoint folder (see :mod:`.checkpoint`) holds tensors in safetensors files and this state in
``state.json``. The fields fall in three groups:

* the *recipe* — schedule (global batch, steps per epoch, total / warm-up steps, peak and minimum
  lr), optimizer hyper-parameters (weight decay, betas, eps, grad clipping), precision, seed and
  model config. Resuming with any of them changed would silently train something else (the saved
  optimizer param groups would even override changed flags), so :meth:`TrainState.check_resume`
  refuses it, naming the field;
* the *layout* — world size, per-device batch, loader workers: a change is allowed (a run may
  move to another machine) but the data order then differs, so it is reported as a warning;
* the *progress* — step, non-finite counters, elapsed time, the full train config (for reading).

``state.json`` is untrusted input (it may be edited, truncated or from another version):
:meth:`TrainState.from_json` checks every field's type and reports the file and the field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError

# Fields that must be equal to resume, with what they fix (for the error message).
RECIPE = {
    "global_batch": "the data position of every step",
    "steps_per_epoch": "the data position of every step",
    "total_steps": "the lr schedule",
    "warmup_steps": "the lr schedule",
    "peak_lr": "the lr schedule",
    "min_lr": "the lr schedule",
    "weight_decay": "the optimizer (the saved param groups would override the new value)",
    "betas": "the optimizer (the saved param groups would override the new value)",
    "eps": "the optimizer (the saved param groups would override the new value)",
    "clip_grad": "the update rule",
    "precision": "the numerics (autocast dtype, grad scaler state)",
    "seed": "the masking noise and data order",
    "model_config": "the architecture",
}
LAYOUT = ("world_size", "per_device_batch", "num_workers")
# Added after the first checkpoint format: missing in older state.json files, then not compared.
_NEWER = ("min_lr", "weight_decay", "betas", "eps", "clip_grad", "precision")


@dataclass
class TrainState:
    """Everything about a run that a checkpoint stores besides tensors (see the module docs)."""

    step: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    seed: int
    model_config: dict[str, Any]
    world_size: int
    per_device_batch: int
    num_workers: int
    min_lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = None
    clip_grad: float | None = None
    precision: str | None = None
    nonfinite: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    train_config: dict[str, Any] = field(default_factory=dict)
    # fields an older state.json did not record (not compared); not saved
    unrecorded: tuple[str, ...] = field(default=(), compare=False)

    # ---- JSON ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A flat JSON object (plus derived, human-friendly epoch / sample counts)."""
        doc = dataclasses.asdict(self)
        del doc["unrecorded"]
        doc["betas"] = None if self.betas is None else list(self.betas)
        doc["epoch"], doc["step_in_epoch"] = divmod(self.step, self.steps_per_epoch)
        doc["samples_seen"] = self.step * self.global_batch
        return doc

    @classmethod
    def from_json(cls, doc: Any, source: str) -> TrainState:
        """Parse ``state.json`` text; a :class:`CheckpointError` names ``source`` and the field."""
        if not isinstance(doc, dict):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(doc).__name__}")
        values: dict[str, Any] = {"unrecorded": tuple(n for n in _NEWER if n not in doc)}
        for f in dataclasses.fields(cls):
            if f.name == "unrecorded":
                continue
            if f.name not in doc:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise CheckpointError(f"{source}: missing field {f.name!r}")
                continue
            values[f.name] = _checked(f.name, doc[f.name], source)
        if values["steps_per_epoch"] < 1:
            raise CheckpointError(f"{source}: field 'steps_per_epoch' must be >= 1")
        return cls(**values)

    # ---- resume ----------------------------------------------------------------------------------
    def check_resume(self, current: TrainState, source: str) -> list[str]:
        """Raise if ``current`` (this run) differs in a recipe field; return layout warnings."""
        for name, fixes in RECIPE.items():
            saved, mine = getattr(self, name), getattr(current, name)
            if name in self.unrecorded:
                continue  # an older checkpoint did not record it
            if not _same(saved, mine):
                shown = "differs" if name == "model_config" else f"was {saved}, this run has {mine}"
                raise CheckpointError(
                    f"{source}: {name} {shown}; it fixes {fixes}. Resume with the run's own "
                    "settings (or start a new run in another --out folder)"
                )
        return [
            f"resuming with {name}={getattr(current, name)} (checkpoint: {getattr(self, name)}): "
            "the data order will differ from the uninterrupted run"
            for name in LAYOUT
            if getattr(self, name) != getattr(current, name)
        ]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


_INTS = (
    "step",
    "global_batch",
    "steps_per_epoch",
    "total_steps",
    "warmup_steps",
    "seed",
    "world_size",
    "per_device_batch",
    "num_workers",
)
_FLOATS = ("peak_lr", "min_lr", "weight_decay", "eps", "clip_grad", "elapsed_s")
_DICTS = ("model_config", "nonfinite", "train_config")


def _checked(name: str, value: Any, source: str) -> Any:
    """``value`` of field ``name`` if it has the right type (None allowed for optional fields)."""

    def bad(want: str) -> CheckpointError:
        return CheckpointError(f"{source}: field {name!r} must be {want}, got {value!r}")

    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is None and name == "clip_grad":
        return None
    if name in _INTS:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad("an integer >= 0")
        return value
    if name in _FLOATS:
        if not is_num or not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if name in _DICTS:
        if not isinstance(value, dict):
            raise bad("an object")
        if name == "nonfinite" and not all(isinstance(v, int) for v in value.values()):
            raise bad("an object of integers")
        return value
    if name == "betas":
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in value)
        ):
            raise bad("two numbers")
        return (float(value[0]), float(value[1]))
    if name == "precision":
        if value not in ("bf16", "fp16", "fp32"):
            raise bad("one of bf16, fp16, fp32")
        return value
    raise AssertionError(f"TrainState field {name} has no check")  # pragma: no cover
