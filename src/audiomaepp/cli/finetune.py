"""``audiomaepp finetune --model MODEL_DIR|OWNER/NAME|random:PRESET --task TASK --out RUN``.

Settings: :class:`audiomaepp.finetune.FinetuneConfig` defaults (fields left at None take the
recipe's, :mod:`audiomaepp.finetune.recipe`), then ``--config FILE`` (JSON), then the flags given.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Fine-tune a pretrained encoder (or a random-init one) with a classification head on a HEAR-format
task folder (train/valid/test or k-fold: every fold is run and the mean reported) or a CSV manifest
(header path,labels[,split]; labels ';'-separated; multilabel when a row has several).

Head: the probe's MLP on the band-wise time means of the encoder tokens (the scene embedding's
layout). Recipe (--recipe auto picks by training-set size, see audiomaepp.finetune.recipe):
small (< 1 000 clips): >= 300 steps, 10 % warm-up, head lr 10x, no mixup, SpecAugment 8 bins /
20 frames; medium: MAE's schedule, mixup 0.25; large (AudioSet): MAE's recipe (50 epochs, mixup
0.5, SpecAugment 30 bins / 40 frames). Always: AdamW (0.9/0.999, weight decay 0.05), blr 1e-3 x
batch/256 (1e-2 with --linear-probe, which freezes the encoder), layer-wise lr decay 0.75, cosine
to 1e-6, drop path 0.1, label smoothing 0.1, random 2-s crops; clip scores average all 2-s
windows. Several GPUs: python -m torch.distributed.run --nproc-per-node 8 -m audiomaepp.cli.main
finetune ...

RUN gets report.md / report.json / per_class.png and, per fold, checkpoints/, metrics.jsonl,
best/ (the classifier with the best validation score: AudioClassifier.from_pretrained(RUN/best)),
model/ (last step) and test.json. SIGTERM / Ctrl-C checkpoint the running fold and end the job
(exit 0); --resume auto continues from there.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` sub-command: its flags are FinetuneConfig's fields."""
    from ..finetune import FinetuneConfig
    from .config_flags import add_config_flags

    p = subparsers.add_parser(
        "finetune",
        help="fine-tune an encoder into an audio classifier",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    add_config_flags(p, FinetuneConfig)
    p.add_argument(
        "--config", metavar="FILE", help="FinetuneConfig JSON (flags given here override it)"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    """FinetuneConfig from defaults <- ``--config`` <- the flags actually given."""
    from ..finetune import FinetuneConfig
    from .config_flags import config_from_args

    cfg = config_from_args(FinetuneConfig, args)
    if not cfg.model or not cfg.task:
        raise ValueError("--model and --task are required (or set in --config)")
    return cfg


def run(args: argparse.Namespace) -> int:
    """0 when finished or cleanly stopped, 1 on a fault, 2 on bad settings or inputs."""
    from ..errors import AudioMAEError
    from ..finetune import finetune
    from ..finetune.report import markdown, report_dict
    from ..training import NonFiniteLossError

    try:
        cfg = build_config(args)
    except (ValueError, TypeError, OSError) as exc:
        logger.error("finetune: %s", exc)
        return 2
    if getattr(args, "print_config", False):
        print(cfg.to_json())
        return 0
    try:
        result = finetune(cfg)
    except NonFiniteLossError as exc:
        logger.error("finetune: %s", exc)
        return 1
    except (AudioMAEError, ValueError, FileNotFoundError) as exc:
        logger.error("finetune: %s", exc)
        return 2
    if os.environ.get("RANK", "0") != "0":
        return 0
    if not result.finished:
        logger.info("finetune stopped; continue with --resume auto (run folder %s)", cfg.out_dir)
        return 0
    print(markdown(report_dict(result)))
    print(f"classifier: {result.model_dir}  (AudioClassifier.from_pretrained / audiomaepp predict)")
    return 0
