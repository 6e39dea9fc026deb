"""Pretraining configuration as code: one typed dataclass, the spec §6 recipe as defaults.

Every field has a one-line reason. ``TrainConfig`` is plain data (JSON in, JSON out); the numbers
that depend on the machine (device, world size, accumulation, steps per epoch) are worked out by
:func:`audiomaepp.training.trainer.plan_run` when a run starts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..model import AudioMAEConfig

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


ConfigT = TypeVar("ConfigT", bound="RecipeConfig")


class RecipeConfig:
    """What pretraining's and fine-tuning's dataclass configs share: the lr rule and JSON round trips."""

    lr: float | None
    blr: float
    batch_size: int
    betas: tuple[float, float]

    def peak_lr(self) -> float:
        """``lr`` if given, else ``blr * batch_size / 256`` (spec §6)."""
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls: type[ConfigT], d: dict[str, Any]) -> ConfigT:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[ConfigT], path: str | Path) -> ConfigT:
        """Read a JSON file holding (a subset of) the fields; missing ones keep their defaults."""
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object of {cls.__name__} fields")
        return cls.from_dict(d)

    def replace(self: ConfigT, **changes: Any) -> ConfigT:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class TrainConfig(RecipeConfig):
    """Everything a pretraining run needs; defaults are the paper's recipe (spec §6)."""

    # ---- model -----------------------------------------------------------------------------------
    preset: str = "base"  # AudioMAE++-Base is the paper's main model
    model: dict[str, Any] = field(
        default_factory=dict
    )  # AudioMAEConfig field overrides on the preset
    # ---- data ------------------------------------------------------------------------------------
    data: str | None = None  # shards / manifest folder / audio folder for audiomaepp.data
    out_dir: str = "runs/pretrain"  # run directory: checkpoints, metrics, viz, exported model
    samples_per_epoch: int | None = None  # None: one crop per stored clip per epoch, as the paper
    num_workers: int = (
        8  # DataLoader workers per rank: 8 decode float16 shards faster than a GPU eats
    )
    shuffle_buffer: int = 5000  # clips mixed within a worker's stream (the loader's default)
    # ---- schedule (spec §6) ------------------------------------------------------------------------
    epochs: int = 100  # the paper pretrains for 100 epochs
    warmup_epochs: float = (
        10.0  # 10 linear warm-up epochs (with --max-steps: the same 10 % of the steps)
    )
    warmup_steps: int | None = None  # overrides warmup_epochs (short runs count in steps)
    max_steps: int | None = (
        None  # overrides epochs: the schedule ends (lr = 0) after this many steps
    )
    stop_after: int | None = None  # stop (checkpoint, exit 0) after this step, schedule unchanged
    batch_size: int = 1024  # GLOBAL batch: 8 GPUs x 128 in the paper
    per_device_batch: int | None = None  # None: batch_size // world (no gradient accumulation)
    blr: float = 1.5e-4  # base lr per 256 samples (MAE's linear scaling rule)
    lr: float | None = None  # absolute peak lr; None: blr * batch_size / 256 (6e-4 at 1024)
    min_lr: float = 0.0  # the half-cycle cosine ends at 0
    weight_decay: float = 0.05  # AdamW decay on matrices only (no decay on biases / 1-D params)
    betas: tuple[float, float] = (0.9, 0.95)  # MAE's betas: a shorter second-moment memory
    eps: float = 1e-8  # AdamW's default, as the release
    clip_grad: float | None = None  # the release does not clip; a max global grad norm if set
    # ---- runtime -----------------------------------------------------------------------------------
    device: str = "auto"  # auto: CUDA if available, else CPU
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU (CPU autocast is slow)
    compile: bool | None = (
        None  # None: torch.compile on CUDA, eager on CPU (compiling costs minutes)
    )
    fused_adamw: bool | None = (
        None  # None: fused AdamW on CUDA (one kernel; skips bad steps on device)
    )
    seed: int = 0  # model init, masking noise and data order all derive from it
    # ---- bookkeeping -------------------------------------------------------------------------------
    save_every: int = 1000  # steps between checkpoints (~20 min of base on 8 GPUs)
    keep_last: int = 3  # checkpoints kept (0 = all); older ones are deleted
    log_every: int = 50  # steps between loss all-reduces / metrics lines (each is a host sync)
    viz_every: int = 1000  # steps between reconstruction PNGs (0 = off)
    resume: str | None = None  # checkpoint dir, run dir, or "auto" (latest in out_dir, if any)
    max_nonfinite: int = 5  # consecutive non-finite steps tolerated before stopping with an error
    peak_tflops: float | None = None  # per-device peak for MFU; None: looked up by GPU name
    tensorboard: bool = True  # write TensorBoard events when the tensorboard package is installed
    progress: bool = True  # tqdm progress bar on rank 0
    export: bool = True  # write out_dir/model (save_pretrained) when the run finishes
    dist_timeout_s: int = 1800  # collective timeout: long enough for rank 0 to write a checkpoint

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives lists
        self.model = dict(self.model)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if self.device not in DEVICES:
            raise ValueError(f"TrainConfig.device={self.device!r}; choose from {DEVICES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision={self.precision!r}; choose from {PRECISIONS}")
        positive = ("epochs", "batch_size", "log_every", "max_nonfinite")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}; must be >= 1")
        optional_positive = ("per_device_batch", "max_steps", "samples_per_epoch", "stop_after")
        for name in optional_positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TrainConfig.{name}={value}; must be >= 1 (or None)")
        non_negative = (
            "warmup_epochs",
            "save_every",
            "keep_last",
            "viz_every",
            "num_workers",
            "min_lr",
            "weight_decay",
            "shuffle_buffer",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}; must be >= 0")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps={self.warmup_steps}; must be >= 0")
        if (self.lr if self.lr is not None else self.blr) <= 0:
            raise ValueError("TrainConfig: the learning rate (lr or blr) must be > 0")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"TrainConfig.clip_grad={self.clip_grad}; must be > 0 (or None)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas={self.betas}; need two values in [0, 1)")

    # ---- derived ---------------------------------------------------------------------------------
    def model_config(self) -> AudioMAEConfig:
        """The preset with the ``model`` overrides applied."""
        return AudioMAEConfig.preset(self.preset, **self.model)
