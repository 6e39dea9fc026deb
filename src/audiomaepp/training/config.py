"""Training configuration as code: the shared loop's settings and the pretraining run around them.

:class:`LoopConfig` is what the training loop reads (schedule, optimiser, runtime, checkpoints,
logs); its defaults are the paper's pretraining recipe (spec §6). Pretraining's
:class:`TrainConfig` and fine-tuning's ``FinetuneConfig`` both nest one as ``loop`` (fine-tuning
a subclass with its own recipe's defaults), so a loop setting is declared once. Every field has a
one-line reason (:func:`~audiomaepp.settings.knob`), from which the CLI flags are generated.

Configs are plain data (JSON in, JSON out; the flat JSON of earlier versions is read too); the
numbers that depend on the machine (device, world size, accumulation, steps per epoch) are worked
out by :func:`audiomaepp.training.trainer.plan_run` when a run starts.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from ..model import AudioMAEConfig
from ..settings import ConfigTree, knob, section

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
DEVICES = typing.get_args(Device)
PRECISIONS = typing.get_args(Precision)


@dataclass
class LoopConfig(ConfigTree):
    """Training loop: schedule, optimiser, runtime, checkpoints and logs."""

    # ---- schedule (spec §6) ----------------------------------------------------------------------
    epochs: int = knob(100, "the paper pretrains for 100 epochs")
    warmup_epochs: float = knob(10.0, "linear warm-up epochs (with --max-steps: the same share)")
    warmup_steps: int | None = knob(None, "overrides warmup_epochs (short runs count in steps)")
    max_steps: int | None = knob(None, "overrides epochs: the schedule ends (lr = 0) here")
    stop_after: int | None = knob(None, "stop (checkpoint, exit 0) after this step; same schedule")
    samples_per_epoch: int | None = knob(None, "None: one crop per stored clip, as the paper")
    batch_size: int = knob(1024, "GLOBAL batch over devices and accumulation: 8 GPUs x 128")
    per_device_batch: int | None = knob(None, "None: batch_size // devices (no accumulation)")
    # ---- optimiser -------------------------------------------------------------------------------
    blr: float = knob(1.5e-4, "base lr per 256 samples (MAE's linear scaling rule)")
    lr: float | None = knob(None, "absolute peak lr; None: blr * batch_size / 256")
    min_lr: float = knob(0.0, "the half-cycle cosine ends here")
    weight_decay: float = knob(0.05, "AdamW decay on matrices only (not biases / 1-D params)")
    betas: tuple[float, float] = knob((0.9, 0.95), "MAE's AdamW betas: a short 2nd-moment memory")
    eps: float = knob(1e-8, "AdamW's default, as the release")
    clip_grad: float | None = knob(None, "max global grad norm; None: no clipping, as the release")
    # ---- runtime ---------------------------------------------------------------------------------
    device: Device = knob("auto", "auto: CUDA if available, else CPU")
    precision: Precision = knob("auto", "auto: bf16 autocast on CUDA, fp32 on CPU (autocast slow)")
    compile: bool | None = knob(None, "None: torch.compile on CUDA, eager on CPU (costs minutes)")
    fused_adamw: bool | None = knob(None, "None: fused AdamW on CUDA (one kernel, on-device skip)")
    num_workers: int = knob(
        8, "DataLoader workers per rank: 8 decode shards faster than a GPU eats"
    )
    seed: int = knob(0, "model init, masking noise and data order all derive from it")
    dist_timeout_s: int = knob(1800, "collective timeout: long enough for rank 0 to checkpoint")
    # ---- checkpoints, logs and faults ------------------------------------------------------------
    save_every: int | None = knob(
        1000, "steps between checkpoints (~20 min of base on 8 GPUs; 0: at the end)"
    )
    keep_last: int = knob(3, "checkpoints kept (0 = all); older ones are deleted")
    resume: str | None = knob(
        None, "checkpoint / run folder, or auto: the latest in the run folder", metavar="PATH|auto"
    )
    log_every: int = knob(50, "steps between loss all-reduces / metrics lines (each a host sync)")
    max_nonfinite: int = knob(5, "consecutive non-finite steps before stopping with an error")
    peak_tflops: float | None = knob(None, "per-device peak for MFU; None: looked up by GPU name")
    tensorboard: bool = knob(True, "TensorBoard events when the tensorboard package is installed")
    progress: bool = knob(True, "tqdm progress bar on rank 0")

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives lists
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        self.check_choices()
        name = type(self).__name__
        for f in ("epochs", "batch_size", "log_every", "max_nonfinite", "dist_timeout_s"):
            if getattr(self, f) < 1:
                raise ValueError(f"{name}.{f}={getattr(self, f)}; must be >= 1")
        for f in ("per_device_batch", "max_steps", "samples_per_epoch", "stop_after"):
            value = getattr(self, f)
            if value is not None and value < 1:
                raise ValueError(f"{name}.{f}={value}; must be >= 1 (or None)")
        for f in ("warmup_epochs", "keep_last", "num_workers", "min_lr", "weight_decay"):
            if getattr(self, f) < 0:
                raise ValueError(f"{name}.{f}={getattr(self, f)}; must be >= 0")
        for f in ("warmup_steps", "save_every"):
            value = getattr(self, f)
            if value is not None and value < 0:
                raise ValueError(f"{name}.{f}={value}; must be >= 0 (or None)")
        if (self.lr if self.lr is not None else self.blr) <= 0:
            raise ValueError(f"{name}: the learning rate (lr or blr) must be > 0")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"{name}.clip_grad={self.clip_grad}; must be > 0 (or None)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"{name}.betas={self.betas}; need two values in [0, 1)")

    def peak_lr(self) -> float:
        """``lr`` if given, else ``blr * batch_size / 256`` (spec §6)."""
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256


@dataclass
class TrainConfig(ConfigTree):
    """Pretraining: the model, the data and the run folder."""

    preset: str = knob("base", "AudioMAE++-Base is the paper's main model")
    model: dict[str, Any] = knob(
        {}, "AudioMAEConfig field overrides on the preset", flag="--model-set"
    )
    data: str | None = knob(
        None, "shards / manifest folder / audio folder for audiomaepp.data", metavar="SOURCE"
    )
    out_dir: str = knob(
        "runs/pretrain",
        "run folder: checkpoints, metrics, viz, the exported model",
        flag="--out",
        metavar="RUN_DIR",
    )
    shuffle_buffer: int = knob(5000, "clips mixed within a worker's stream (the loader's default)")
    viz_every: int = knob(1000, "steps between reconstruction PNGs (0 = off)")
    export: bool = knob(True, "write out_dir/model (save_pretrained) when the run finishes")
    loop: LoopConfig = section(LoopConfig, "the training loop (the paper's pretraining recipe)")

    def __post_init__(self) -> None:
        self.model = dict(self.model)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (the loop checks its own)."""
        if not isinstance(self.loop, LoopConfig):
            raise TypeError(
                f"TrainConfig.loop must be a LoopConfig, got {type(self.loop).__name__}"
            )
        for name in ("viz_every", "shuffle_buffer"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}; must be >= 0")

    # ---- derived ---------------------------------------------------------------------------------
    def model_config(self) -> AudioMAEConfig:
        """The preset with the ``model`` overrides applied."""
        return AudioMAEConfig.preset(self.preset, **self.model)
