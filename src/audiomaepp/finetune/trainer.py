"""Fine-tuning on the pretraining loop: :class:`FinetuneTrainer` is a
:class:`~audiomaepp.training.Trainer` with another loss, batch source, optimiser groups and a
validation hook; precision / autocast, torch.compile, fused AdamW, DDP under ``torchrun``,
safetensors checkpoints, resume, SIGTERM, ``metrics.jsonl`` and the progress bar are the pretraining
trainer's own.

One fold = one run folder: ``checkpoints/``, ``metrics.jsonl`` (loss lines and ``valid_<metric>``
lines), ``best/`` (the classifier with the best validation score so far, written when it improves),
``model/`` (the last step's classifier) and ``test.json`` (the best classifier on the test split).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..evaluation.metrics import average_precision, compute_metrics
from ..evaluation.tasks import Fold
from ..fileio import atomic_write_bytes, json_safe
from ..training import checkpoint as ckpt
from ..training.config import TrainConfig
from ..training.distributed import DistEnv, any_rank, process_group
from ..training.faults import StopRequest
from ..training.trainer import Trainer
from .config import FinetuneConfig
from .data import (
    CropAugment,
    EvalSet,
    FinetuneTask,
    LabelledCropDataset,
    LabelledSplit,
    sampling_weights,
)
from .model import AudioClassifier, build_classifier
from .recipe import resolve
from .report import write_report
from .results import BEST_DIR, FinetuneResult, FoldResult

log = logging.getLogger(__name__)

TEST_FILE = "test.json"
RECIPE_FILE = "finetune_config.json"


# ---- loss and optimiser groups -------------------------------------------------------------------
class ClassifierLoss(nn.Module):
    """``(x, y, noise) -> loss``: soft-target cross-entropy with label smoothing, or BCE for
    multilabel.

    ``noise`` ``(B, 250)``: the trainer's per-step uniforms, which drive drop path (see the model).

    ``y`` ``(B, C)`` are (mixup-)soft targets; smoothing mixes them with the uniform distribution,
    as timm's ``SoftTargetCrossEntropy`` after ``Mixup(label_smoothing=...)``.
    """

    def __init__(self, model: AudioClassifier, label_smoothing: float) -> None:
        super().__init__()
        self.model = model
        self.multiclass = model.config.prediction_type == "multiclass"
        self.smoothing = label_smoothing

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = self.model(x, noise).float()  # (B, C); the loss in fp32 under autocast
        if self.multiclass:
            target = y * (1.0 - self.smoothing) + self.smoothing / y.shape[1]
            return -(target * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
        return nn.functional.binary_cross_entropy_with_logits(logits, y)


def layer_id(name: str, depth: int) -> int:
    """MAE / BEiT layer index: patch embedding and cls 0, block ``i`` ``i + 1``, the rest
    ``depth + 1``."""
    if name.startswith(("encoder.patch_embed", "encoder.cls_token", "encoder.pos_embed")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def layer_decay_groups(
    model: AudioClassifier, weight_decay: float, layer_decay: float, head_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW groups by (layer, decay or not), each with ``lr_scale = layer_decay ** (depth + 1 -
    layer)``; the head's parameters (a layer of their own) get ``head_lr_scale``."""
    from ..training.optim import no_decay

    depth = model.config.encoder.depth
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            # frozen: the position table, the release's unused LN3, a linear probe's encoder
            continue
        lid, plain = layer_id(name, depth), no_decay(name, p)
        head = name.startswith("head.")
        lid = depth + 2 if head else lid
        g = groups.setdefault(
            (lid, plain),
            {
                "params": [],
                "names": [],
                "weight_decay": 0.0 if plain else weight_decay,
                "lr_scale": head_lr_scale if head else layer_decay ** (depth + 1 - lid),
            },
        )
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


# ---- evaluation ----------------------------------------------------------------------------------
@dataclass
class SplitScores:
    """Clip-level probabilities ``(n, C)`` of the clips that could be read, their targets and the
    rest."""

    scores: np.ndarray
    targets: np.ndarray
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason


def score_split(
    model: AudioClassifier, evalset: EvalSet, batch_size: int, clips_per_call: int = 32
) -> SplitScores:
    """Average the window probabilities of every clip (batched across clips)."""
    kept, scores = [], []
    n = len(evalset.split)
    for start in range(0, n, clips_per_call):
        idx = list(range(start, min(n, start + clips_per_call)))
        wins = [(i, evalset.windows(i)) for i in idx]
        wins = [(i, w) for i, w in wins if w is not None]
        for (i, _), s in zip(
            wins, model.window_scores([w for _, w in wins], batch_size), strict=True
        ):
            kept.append(i)
            scores.append(s.mean(axis=0))
    C = evalset.split.targets.shape[1]
    failed = {str(evalset.split.paths[i]): msg for i, msg in evalset.failed.items()}
    return SplitScores(np.array(scores).reshape(-1, C), evalset.split.targets[kept], failed)


def per_class_ap(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    """AP of every class (NaN for a class without a positive in the split)."""
    return [average_precision(scores[:, c], targets[:, c]) for c in range(targets.shape[1])]


def confusion(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``(C, C)`` counts, rows = true class, columns = predicted (multiclass)."""
    C = targets.shape[1]
    m = np.zeros((C, C), dtype=np.int64)
    np.add.at(m, (targets.argmax(axis=1), scores.argmax(axis=1)), 1)
    return m


# ---- the trainer ---------------------------------------------------------------------------------
class FinetuneTrainer(Trainer):
    """The pretraining :class:`Trainer` with the classifier's loss, layer-decay groups and
    validation."""

    progress_desc = "finetune"

    def __init__(
        self,
        cfg: TrainConfig,
        env: DistEnv,
        dataset: LabelledCropDataset,
        model: AudioClassifier,
        ft: FinetuneConfig,
        task: FinetuneTask,
        valid: LabelledSplit,
        eval_every: int,
    ) -> None:
        self.ft, self.task, self.eval_every = ft, task, eval_every
        self.valid = EvalSet(valid)
        self.best_score, self.best_step = -math.inf, None
        super().__init__(cfg, env, dataset=dataset, model=model)

    def param_groups(self) -> list[dict[str, Any]]:
        """Layer-decay groups, handed to the loop's one AdamW (``training.optim.adamw``)."""
        return layer_decay_groups(
            self.model, self.loop.weight_decay, self.ft.layer_decay, self.ft.head_lr_scale
        )

    def make_loss_module(self) -> nn.Module:
        return ClassifierLoss(self.model, self.ft.label_smoothing)

    def loss_inputs(self, batch: Any, noise: torch.Tensor) -> tuple[Any, ...]:
        return (
            batch["x"].to(self.device, non_blocking=True),
            batch["y"].to(self.device, non_blocking=True),
            noise,
        )

    def after_step(self) -> dict[str, float] | None:
        """Validate every ``eval_every`` steps and at the end; keep the best classifier in
        ``best/``."""
        if (
            not (self.step % self.eval_every == 0 or self.step == self.plan.total_steps)
            or not self.env.is_main
        ):
            return None
        metric = self.task.primary_metric
        s = score_split(self.model, self.valid, self.ft.eval_batch_size)
        value = (
            compute_metrics([metric], s.scores, s.targets)[metric] if len(s.scores) else math.nan
        )
        # strict: the earliest best wins; a NaN score never beats a number (the first one is kept)
        better = value > self.best_score or (math.isnan(self.best_score) and not math.isnan(value))
        if self.best_step is None or better:
            self.best_score, self.best_step = value, self.step
            self.model.save_pretrained(self.run_dir / BEST_DIR)
        return {f"valid_{metric}": value, "best_valid": self.best_score}

    def extra_state(self) -> dict[str, Any]:
        best = self.best_score if math.isfinite(self.best_score) else None
        return {"finetune": {"best_score": best, "best_step": self.best_step}}

    def resume(self, path: Path) -> None:
        super().resume(path)
        saved = ckpt.read_state(path).get("finetune") or {}
        score = saved.get("best_score")
        self.best_score = -math.inf if score is None else float(score)
        self.best_step = saved.get("best_step")


# ---- one fold, all folds -------------------------------------------------------------------------
def train_config(
    ft: FinetuneConfig, run_dir: Path, samples_per_epoch: int, save_every: int
) -> TrainConfig:
    """The loop's settings for one fold: ``ft.loop`` with the fold's epoch and checkpoint steps."""
    loop = ft.loop.replace(samples_per_epoch=samples_per_epoch, save_every=save_every)
    return TrainConfig(out_dir=str(run_dir), viz_every=0, export=True, loop=loop)


def epoch_samples(ft: FinetuneConfig, n_train: int, world: int) -> int:
    """Crops per epoch: one per training clip (or as set), rounded up to whole global batches."""
    n = ft.loop.samples_per_epoch or n_train
    step = ft.loop.batch_size
    if step % world:
        raise ValueError(f"batch size {step} is not a multiple of {world} devices")
    return max(1, math.ceil(n / step)) * step


def use_weights(ft: FinetuneConfig, task: FinetuneTask) -> bool:
    return ft.weighted_sampling == "on" or (
        ft.weighted_sampling == "auto" and task.prediction_type == "multilabel"
    )


def run_fold(
    ft: FinetuneConfig, task: FinetuneTask, fold: Fold, run_dir: Path, env: DistEnv
) -> FoldResult:
    """Fine-tune on ``fold.train``, select on ``fold.valid``, test the best on ``fold.test``."""
    train = task.train_split(fold)
    ft = resolve(ft, len(train))  # the recipe's values for the fields left at None
    samples = epoch_samples(ft, len(train), env.world_size)
    steps_per_epoch = samples // ft.loop.batch_size
    eval_every = ft.eval_every or steps_per_epoch
    save_every = ft.loop.save_every if ft.loop.save_every is not None else eval_every
    cfg = train_config(ft, run_dir, samples, save_every)
    model = build_classifier(
        ft.model,
        task.labels,
        task.prediction_type,
        pooling=ft.pooling,
        linear_probe=ft.linear_probe,
        drop_path=ft.drop_path,
        seed=ft.loop.seed,
        overrides=ft.model_overrides,
        head=ft.head,
        head_hidden=ft.head_hidden,
        head_dropout=ft.head_dropout,
        head_init_std=ft.head_init_std,
    )
    augment = CropAugment(ft.freq_mask, ft.time_mask, ft.mixup, ft.mixup_alpha)
    dataset = LabelledCropDataset(
        train,
        samples,
        rank=env.rank,
        world_size=env.world_size,
        seed=ft.loop.seed,
        weights=sampling_weights(train.targets) if use_weights(ft, task) else None,
        augment=augment,
        rank_batch=ft.loop.batch_size // env.world_size,
    )
    trainer = FinetuneTrainer(
        cfg, env, dataset, model, ft, task, task.splits[fold.valid], eval_every
    )
    if env.is_main:  # the resolved recipe, beside the loop's train_config.json
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / RECIPE_FILE, ft.to_json().encode())
    trainer.restore()  # rank 0 picks the checkpoint; all ranks load it and agree on the step
    result = trainer.run()
    out = FoldResult(
        fold.test,
        fold.valid,
        run_dir,
        result.finished,
        trainer.best_step,
        trainer.best_score if math.isfinite(trainer.best_score) else None,
    )
    if not result.finished or not env.is_main:
        return out
    return test_fold(out, task, ft, trainer.valid.failed)


def test_fold(
    out: FoldResult, task: FinetuneTask, ft: FinetuneConfig, valid_failed: dict[int, str]
) -> FoldResult:
    """Score ``out.model_dir`` on the test split and write ``test.json``."""
    model = AudioClassifier.from_pretrained(out.model_dir, device=_device(ft))
    split = task.splits[out.fold]
    s = score_split(model, EvalSet(split), ft.eval_batch_size)
    if not len(s.scores):
        raise RuntimeError(f"no test clip of {task.name}/{out.fold} could be read")
    out.test = compute_metrics(list(task.metrics), s.scores, s.targets)
    out.per_class_ap = per_class_ap(s.scores, s.targets)
    out.confusion = (
        confusion(s.scores, s.targets).tolist() if task.prediction_type == "multiclass" else None
    )
    out.n_test = len(s.scores)
    out.failed = {
        **s.failed,
        **{str(task.splits[out.valid].paths[i]): m for i, m in valid_failed.items()},
    }
    atomic_write_bytes(
        out.run_dir / TEST_FILE, json.dumps(json_safe(out.to_dict()), indent=1).encode()
    )
    return out


def _device(ft: FinetuneConfig) -> str:
    from ..devices import resolve_device

    return str(resolve_device(ft.loop.device))


def fold_dirs(task: FinetuneTask, out_dir: Path, folds: list[Fold]) -> list[Path]:
    """One run folder per fold: ``OUT`` itself for train/valid/test tasks, ``OUT/folds/foldNN``
    otherwise."""
    if task.split_mode == "trainvaltest" and len(folds) == 1:
        return [out_dir]
    return [out_dir / "folds" / f.test for f in folds]


def finetune(ft: FinetuneConfig, task: FinetuneTask | None = None) -> FinetuneResult:
    """Fine-tune ``ft.model`` on every (selected) fold of ``ft.task``; write the report to
    ``ft.out_dir``.

    Works in one process and under ``torchrun`` (rank 0 validates, tests and writes).
    """
    from .data import load_task

    task = task or load_task(ft.task, ft.prediction_type, ft.loop.seed)
    if ft.prediction_type and ft.prediction_type != task.prediction_type:
        task.prediction_type = ft.prediction_type
    folds = [f for f in task.folds if ft.folds is None or f.test in ft.folds]
    if not folds:
        raise ValueError(
            f"--folds {ft.folds}: none of the task's test folds {[f.test for f in task.folds]}"
        )
    out = Path(ft.out_dir)
    results: list[FoldResult] = []
    with process_group(ft.loop.device, ft.loop.dist_timeout_s) as env:
        with StopRequest() as stop:  # a signal during one fold's training also marks this one
            for f, d in zip(folds, fold_dirs(task, out, folds), strict=True):
                results.append(run_fold(ft, task, f, d, env))
                if any_rank(stop.requested or not results[-1].finished, env):
                    break  # checkpointed: --resume auto continues here, not with the next fold
    result = FinetuneResult(task, ft, results, out, planned=len(folds))
    if env.is_main and result.finished:
        write_report(result)
    return result
