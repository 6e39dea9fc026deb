"""Pretraining: config, LR schedule, AdamW groups, the DDP-ready loop, checkpoints and metrics.

Python entry point::

    from audiomaepp.training import TrainConfig, pretrain
    result = pretrain(TrainConfig(preset="base", data="shards/", out_dir="runs/base"))
    short = TrainConfig(data="shards/", loop=LoopConfig(max_steps=1000))  # loop settings
    result.model_dir  # RUN_DIR/model, loadable with AudioMAE.from_pretrained

The command line is ``audiomaepp pretrain`` (see ``audiomaepp pretrain --help``).
"""

from .checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from .config import LoopConfig, TrainConfig
from .faults import NonFiniteLossError
from .metrics import read_metrics
from .optim import adamw, build_optimizer, param_groups
from .schedule import LRSchedule, lr_at
from .trainer import RunPlan, RunResult, Trainer, plan_run, pretrain

__all__ = [
    "TrainConfig",
    "LoopConfig",
    "pretrain",
    "RunResult",
    "RunPlan",
    "plan_run",
    "Trainer",
    "NonFiniteLossError",
    "lr_at",
    "LRSchedule",
    "param_groups",
    "adamw",
    "build_optimizer",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "resolve_resume",
    "read_metrics",
]
