"""``audiomaepp pretrain``: masked-autoencoder pretraining (spec §6), one process or ``torchrun``.

Settings come from :class:`audiomaepp.training.TrainConfig` defaults, then ``--config FILE``
(JSON), then the flags given on the command line (a flag left out never overrides the file).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Pretrain an AudioMAE / AudioMAE++ on log-mel crops (the paper's recipe by default: 100 epochs,
global batch 1024, AdamW lr 1.5e-4 x batch/256, 10 warm-up epochs, cosine to 0).

One process:   audiomaepp pretrain --preset base --data SHARDS --out RUN_DIR
Several GPUs:  python -m torch.distributed.run --nproc-per-node 8 -m audiomaepp.cli.main \\
                   pretrain --preset base --data SHARDS --out RUN_DIR
Several nodes: add --nnodes N --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:PORT.

--batch-size is GLOBAL; gradient accumulation = batch / (per-device batch x devices).
RUN_DIR gets checkpoints/ (safetensors + JSON, every --save-every steps and at the end),
metrics.jsonl, viz/*.png, tb/ (if tensorboard is installed) and model/ (the exported model, when
the run finishes). SIGTERM / Ctrl-C checkpoint at the next step and exit 0; --resume auto continues.
"""

# AudioMAEConfig fields with a flag of their own (the others: --model-set FIELD=VALUE)
MODEL_FLAGS = (
    "block",
    "decoder_block",
    "encoder_rope",
    "decoder_rope",
    "swiglu_norm",
    "norm_pix_loss",
    "mask_ratio",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pretrain`` sub-command: its flags are TrainConfig's fields."""
    from ..model import AudioMAEConfig
    from ..training import TrainConfig
    from .config_flags import add_config_flags, add_field_flags

    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a masked autoencoder (one process or torchrun)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    add_config_flags(p, TrainConfig)
    add_field_flags(
        p.add_argument_group("model: AudioMAEConfig fields set on the preset"),
        AudioMAEConfig,
        MODEL_FLAGS,
        into="model",
    )
    p.add_argument(
        "--config", metavar="FILE", help="TrainConfig JSON file (flags given here override it)"
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved TrainConfig JSON and exit"
    )
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    """TrainConfig from defaults <- ``--config`` file <- the flags actually given."""
    from ..training import TrainConfig
    from .config_flags import config_from_args

    cfg = config_from_args(TrainConfig, args)
    cfg.model_config()  # fail now on a bad preset / model field
    return cfg


def run(args: argparse.Namespace) -> int:
    """Run ``pretrain``; 0 when finished or cleanly stopped, 1 on a fault, 2 on bad settings."""
    from ..errors import CheckpointError
    from ..training import NonFiniteLossError, pretrain

    try:
        cfg = build_config(args)
    except (ValueError, TypeError, OSError) as exc:
        logger.error("pretrain: %s", exc)
        return 2
    if getattr(args, "print_config", False):
        print(cfg.to_json())
        return 0
    try:
        result = pretrain(cfg)
    except (NonFiniteLossError, CheckpointError) as exc:
        logger.error("pretrain: %s", exc)
        return 1
    except (ValueError, FileNotFoundError) as exc:  # bad settings or data found at start-up
        logger.error("pretrain: %s", exc)
        return 2
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    state = "finished" if result.finished else "stopped (resume with --resume auto)"
    loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
    logger.info(
        "pretrain %s at step %d/%d, last loss %s, %.1f s; run dir %s",
        state,
        result.step,
        result.total_steps,
        loss,
        result.elapsed_s,
        result.run_dir,
    )
    return 0
