"""The fine-tuning recipe: one typed config whose defaults name their source.

Optimiser, schedule and regularisation follow MAE's ViT fine-tuning recipe (``main_finetune.py``:
AdamW with betas 0.9/0.999, blr 1e-3 scaled by batch/256, layer-wise lr decay 0.75, drop path 0.1,
5 warm-up epochs then cosine to 1e-6, weight decay 0.05, label smoothing 0.1), which AudioMAE,
EAT and BEATs reuse for audio. The audio augmentations are AudioMAE's / AST's: mixup with
probability 0.5 and ``lambda ~ Beta(10, 10)``, and SpecAugment masks scaled from AudioMAE's
AudioSet setting (48 of 128 mel bins, 192 of 1024 frames) to our 80 bins x 200 frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..training.config import RecipeConfig

POOLINGS = ("mean", "cls")
SAMPLING = ("auto", "on", "off")
PREDICTION_TYPES = (None, "multiclass", "multilabel")


@dataclass
class FinetuneConfig(RecipeConfig):
    """Everything a fine-tuning run needs (see the module docstring for where defaults come from)."""

    # ---- what -----------------------------------------------------------------------------------
    model: str = ""  # a model directory (ours or convert-release output) or "random:<preset>"
    model_overrides: dict[str, Any] = field(
        default_factory=dict
    )  # AudioMAEConfig fields for random:<preset>
    task: str = ""  # a HEAR task folder or a CSV manifest (path,labels[,split])
    out_dir: str = "runs/finetune"  # run folder: per-fold runs, report.{md,json}, PNGs
    prediction_type: str | None = (
        None  # None: the task's (CSV: multilabel if any row has 2+ labels)
    )
    folds: list[str] | None = (
        None  # k-fold tasks: the test folds to run (None: all, as HEAR scores)
    )
    # ---- model --------------------------------------------------------------------------------------
    pooling: str = "mean"  # mean of the patch tokens (MAE's global_pool, better than cls for audio)
    linear_probe: bool = False  # freeze the encoder, train the head only
    drop_path: float = 0.1  # stochastic depth of the last block (linearly less in earlier blocks)
    # ---- schedule and optimiser ----------------------------------------------------------------------
    epochs: int = 50  # MAE's fine-tuning length; small audio sets (ESC-50 folds) converge by then
    warmup_epochs: float = 5.0  # MAE: 5 linear warm-up epochs
    max_steps: int | None = None  # overrides epochs (short runs, tests)
    stop_after: int | None = (
        None  # stop (checkpoint, exit) after this step; the schedule is unchanged
    )
    batch_size: int = 64  # GLOBAL batch: small sets (ESC-50: 1 600 training clips) need many steps
    per_device_batch: int | None = None  # None: batch_size // devices (no accumulation)
    blr: float = 1e-3  # MAE's fine-tuning base lr per 256 samples
    lr: float | None = None  # absolute peak lr; None: blr * batch_size / 256
    min_lr: float = 1e-6  # MAE: the cosine ends at 1e-6
    layer_decay: float = (
        0.75  # block i of L gets lr * 0.75^(L - i); the head the full lr (BEiT / MAE)
    )
    weight_decay: float = 0.05  # AdamW decay on matrices only
    betas: tuple[float, float] = (0.9, 0.999)  # MAE fine-tuning uses AdamW's default betas
    clip_grad: float | None = None  # MAE fine-tunes without clipping
    samples_per_epoch: int | None = None  # None: one crop per training clip per epoch
    # ---- loss and augmentation -------------------------------------------------------------------------
    label_smoothing: float = (
        0.1  # multiclass cross-entropy (MAE: 0.1); multilabel BCE is unsmoothed
    )
    mixup: float = (
        0.5  # probability that a training crop is mixed with another (AudioMAE / AST: 0.5)
    )
    mixup_alpha: float = 10.0  # lambda ~ Beta(10, 10): mixes stay near 50/50 (AST's dataloader)
    freq_mask: int = 30  # SpecAugment: up to 30 of 80 mel bins zeroed (AudioMAE AS: 48 of 128)
    time_mask: int = 40  # SpecAugment: up to 40 of 200 frames zeroed (AudioMAE AS: 192 of 1024)
    weighted_sampling: str = (
        "auto"  # auto: on for multilabel sets (AudioMAE's AS-2M sampler), else off
    )
    # ---- evaluation -------------------------------------------------------------------------------------
    eval_every: int | None = (
        None  # steps between validations; None: once per epoch (and at the end)
    )
    eval_batch_size: int = 64  # 2-s chunks per forward pass at evaluation
    # ---- runtime (as pretraining) ------------------------------------------------------------------------
    device: str = "auto"  # CUDA when available
    precision: str = "auto"  # bf16 autocast on CUDA, fp32 on CPU
    compile: bool | None = None  # torch.compile on CUDA, eager on CPU
    fused_adamw: bool | None = None  # fused AdamW on CUDA
    num_workers: int = 4  # DataLoader workers decoding and cropping clips (0: in the main process)
    seed: int = 0  # head init, data order, crops, augmentation and drop path derive from it
    save_every: int | None = None  # steps between checkpoints; None: at every validation
    keep_last: int = 1  # checkpoints kept; fine-tuning runs are short and best/ is kept apart
    log_every: int = 10  # steps between loss lines in metrics.jsonl
    resume: str | None = None  # checkpoint / run folder, or "auto" (latest in the fold's folder)
    max_nonfinite: int = 5  # consecutive non-finite steps before stopping with an error
    progress: bool = True  # tqdm bar with loss, lr and the validation metric
    tensorboard: bool = False  # TensorBoard events (when installed)
    dist_timeout_s: int = 1800  # rank 0 validates alone; the others wait this long at most

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.model_overrides = dict(self.model_overrides)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (the runtime fields are checked by TrainConfig)."""
        if self.pooling not in POOLINGS:
            raise ValueError(f"FinetuneConfig.pooling={self.pooling!r}; choose from {POOLINGS}")
        if self.weighted_sampling not in SAMPLING:
            raise ValueError(
                f"FinetuneConfig.weighted_sampling={self.weighted_sampling!r}; choose from {SAMPLING}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"FinetuneConfig.prediction_type={self.prediction_type!r}; choose from {PREDICTION_TYPES}"
            )
        for name in ("drop_path", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"FinetuneConfig.{name}={getattr(self, name)}; must be in [0, 1)")
        if not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"FinetuneConfig.mixup={self.mixup}; a probability in [0, 1]")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"FinetuneConfig.layer_decay={self.layer_decay}; must be in (0, 1]")
        if self.mixup_alpha <= 0:
            raise ValueError(f"FinetuneConfig.mixup_alpha={self.mixup_alpha}; must be > 0")
        if self.freq_mask < 0 or self.time_mask < 0:
            raise ValueError("FinetuneConfig.freq_mask / time_mask must be >= 0")
        for name in ("eval_every", "eval_batch_size", "samples_per_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"FinetuneConfig.{name}={value}; must be >= 1 (or None)")
