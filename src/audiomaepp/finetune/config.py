"""The fine-tuning recipe: one typed config whose defaults name their source.

Optimiser, schedule and regularisation follow MAE's ViT fine-tuning recipe (``main_finetune.py``:
AdamW with betas 0.9/0.999, blr 1e-3 scaled by batch/256, layer-wise lr decay 0.75, drop path 0.1,
5 warm-up epochs then cosine to 1e-6, weight decay 0.05, label smoothing 0.1), which AudioMAE,
EAT and BEATs reuse for audio. The audio augmentations are AudioMAE's / AST's: mixup with
probability 0.5 and ``lambda ~ Beta(10, 10)``, and SpecAugment masks scaled from AudioMAE's
AudioSet setting (48 of 128 mel bins, 192 of 1024 frames) to our 80 bins x 200 frames.

The loop's settings (schedule, optimiser, runtime, checkpoints) are pretraining's
:class:`~audiomaepp.training.config.LoopConfig`, nested as ``loop``; :class:`FinetuneLoop` only
restates the defaults this recipe changes, each with its reason.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from ..settings import ConfigTree, knob, section
from ..training.config import LoopConfig

Pooling = Literal["bands", "mean", "cls"]
Head = Literal["linear", "mlp"]
RecipeName = Literal["auto", "small", "medium", "large"]
Sampling = Literal["auto", "on", "off"]
PredictionType = Literal["multiclass", "multilabel"]
POOLINGS = typing.get_args(Pooling)
HEADS = typing.get_args(Head)
RECIPE_NAMES = typing.get_args(RecipeName)  # finetune.recipe.RECIPES, plus auto: by size
SAMPLING = typing.get_args(Sampling)
PREDICTION_TYPES = (None, *typing.get_args(PredictionType))


@dataclass
class FinetuneLoop(LoopConfig):
    """Training loop (fine-tuning's defaults; the rest as pretraining)."""

    epochs: int | None = knob(None, "None: the recipe's (small: >= 300 steps; large: MAE's 50)")
    warmup_epochs: float | None = knob(None, "None: 10 % of the epochs (MAE: 5 of 50)")
    samples_per_epoch: int | None = knob(None, "None: one crop per training clip per epoch")
    batch_size: int = knob(64, "GLOBAL batch: small sets (ESC-50: 1 600 clips) need many steps")
    blr: float | None = knob(None, "base lr per 256 samples; None: 1e-3 (MAE), 1e-2 linear probe")
    min_lr: float = knob(1e-6, "MAE: the cosine ends at 1e-6")
    betas: tuple[float, float] = knob((0.9, 0.999), "MAE fine-tunes with AdamW's default betas")
    clip_grad: float | None = knob(None, "MAE fine-tunes without clipping")
    num_workers: int = knob(4, "DataLoader workers decoding and cropping clips (0: in-process)")
    seed: int = knob(0, "head init, data order, crops, augmentation and drop path derive from it")
    dist_timeout_s: int = knob(1800, "rank 0 validates alone; the others wait this long at most")
    save_every: int | None = knob(None, "steps between checkpoints; None: at every validation")
    keep_last: int = knob(1, "checkpoints kept; fine-tuning runs are short and best/ is apart")
    resume: str | None = knob(
        None,
        "checkpoint / run folder, or auto: the latest in the fold's folder",
        metavar="PATH|auto",
    )
    log_every: int = knob(10, "steps between loss lines in metrics.jsonl")
    tensorboard: bool = knob(False, "TensorBoard events (when installed)")
    progress: bool = knob(True, "tqdm bar with loss, lr and the validation metric")

    def validate(self) -> None:
        """LoopConfig's checks; a field left to the recipe (None) is checked once resolved."""
        unset = {k: v for k, v in _RESOLVED_LATER.items() if getattr(self, k) is None}
        if unset:
            dataclasses.replace(self, **unset)  # validates a copy with those fields filled in
            return
        super().validate()


_RESOLVED_LATER = {"epochs": 1, "warmup_epochs": 0.0, "blr": 1.0}  # finetune.recipe.resolve


@dataclass
class FinetuneConfig(ConfigTree):
    """Fine-tuning: what to tune on which task, the head, the loss and augmentation."""

    # ---- what -----------------------------------------------------------------------------------
    model: str = knob(
        "", "a model directory (ours or convert-release), a Hub id or random:<preset>"
    )
    model_overrides: dict[str, Any] = knob(
        {}, "AudioMAEConfig fields for random:<preset>", flag="--model-set"
    )
    task: str = knob("", "a HEAR task folder or a CSV manifest (path,labels[,split])")
    out_dir: str = knob(
        "runs/finetune",
        "run folder: per-fold runs, report.{md,json}, PNGs",
        flag="--out",
        metavar="RUN",
    )
    prediction_type: PredictionType | None = knob(
        None, "None: the task's (CSV: multilabel if any row has 2+ labels)"
    )
    folds: list[str] | None = knob(
        None, "k-fold tasks: the test folds to run (None: all, as HEAR scores)", metavar="FOLD"
    )
    # ---- model ----------------------------------------------------------------------------------
    pooling: Pooling = knob("bands", "band-wise time means: the scene embedding's layout (bench)")
    linear_probe: bool = knob(False, "freeze the encoder, train the head only")
    head: Head = knob("mlp", "the probe's MLP (benchmark); linear: LayerNorm + Linear (MAE)")
    head_hidden: int = knob(1024, "mlp head: hidden units (the probe's hidden_dim)")
    head_dropout: float = knob(0.1, "mlp head: dropout (the probe grid's 0.1)")
    head_init_std: float | None = knob(
        None, "linear head weight std; None: 0.01 frozen, 2e-5 (MAE)"
    )
    head_lr_scale: float | None = knob(None, "head lr = peak lr x this; None: the recipe's")
    recipe: RecipeName = knob("auto", "small / medium / large (finetune.recipe); auto: by clips")
    drop_path: float = knob(0.1, "stochastic depth of the last block (less in earlier blocks)")
    layer_decay: float = knob(0.75, "block i of L gets lr * 0.75^(L - i); the head full (BEiT)")
    # ---- loss and augmentation ------------------------------------------------------------------
    label_smoothing: float = knob(0.1, "multiclass cross-entropy (MAE: 0.1); BCE is unsmoothed")
    mixup: float | None = knob(None, "P(a crop is mixed); None: the recipe's (AS: 0.5, small: 0)")
    mixup_alpha: float = knob(10.0, "lambda ~ Beta(10, 10): mixes stay near 50/50 (AST)")
    freq_mask: int | None = knob(None, "SpecAugment max bins zeroed; None: recipe's (AS: 30 of 80)")
    time_mask: int | None = knob(None, "SpecAugment max frames; None: recipe's (AS: 40 of 200)")
    weighted_sampling: Sampling = knob(
        "auto", "auto: on for multilabel sets (AudioMAE's AS-2M sampler), else off"
    )
    # ---- evaluation -----------------------------------------------------------------------------
    eval_every: int | None = knob(None, "steps between validations; None: every epoch and the end")
    eval_batch_size: int = knob(64, "2-s chunks per forward pass at evaluation")
    # ---- the loop -------------------------------------------------------------------------------
    loop: FinetuneLoop = section(FinetuneLoop, "the training loop (fine-tuning's recipe)")

    def __post_init__(self) -> None:
        self.model_overrides = dict(self.model_overrides)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (the loop checks its own)."""
        if not isinstance(self.loop, FinetuneLoop):
            raise TypeError(
                f"FinetuneConfig.loop must be a FinetuneLoop (fine-tuning's defaults), "
                f"got {type(self.loop).__name__}"
            )
        self.check_choices()
        for name in ("drop_path", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"FinetuneConfig.{name}={getattr(self, name)}; must be in [0, 1)")
        if self.mixup is not None and not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"FinetuneConfig.mixup={self.mixup}; a probability in [0, 1]")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"FinetuneConfig.layer_decay={self.layer_decay}; must be in (0, 1]")
        if self.mixup_alpha <= 0:
            raise ValueError(f"FinetuneConfig.mixup_alpha={self.mixup_alpha}; must be > 0")
        if (self.freq_mask or 0) < 0 or (self.time_mask or 0) < 0:
            raise ValueError("FinetuneConfig.freq_mask / time_mask must be >= 0")
        for name in ("eval_every", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"FinetuneConfig.{name}={value}; must be >= 1 (or None)")
