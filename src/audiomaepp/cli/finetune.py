"""``audiomaepp finetune --model MODEL_DIR|random:PRESET --task TASK --out RUN``.

Settings: :class:`audiomaepp.finetune.FinetuneConfig` defaults (MAE's fine-tuning recipe,
AudioMAE's audio augmentations), then ``--config FILE`` (JSON), then the flags given.
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

Recipe defaults: AdamW (betas 0.9/0.999, weight decay 0.05), blr 1e-3 x batch/256, layer-wise lr
decay 0.75, 5 warm-up epochs + cosine to 1e-6, drop path 0.1, label smoothing 0.1, mixup 0.5
(Beta(10,10)), SpecAugment (30 bins, 40 frames), random 2-s crops; clip scores average all 2-s
windows. --linear-probe freezes the encoder. Several GPUs: python -m torch.distributed.run
--nproc-per-node 8 -m audiomaepp.cli.main finetune ...

RUN gets report.md / report.json / per_class.png and, per fold, checkpoints/, metrics.jsonl,
best/ (the classifier with the best validation score: AudioClassifier.from_pretrained(RUN/best)),
model/ (last step) and test.json. SIGTERM / Ctrl-C checkpoint and exit 0; --resume auto continues.
"""

_NOT_CONFIG = {"config", "model_set", "print_config", "func", "command", "verbose"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune an encoder into an audio classifier",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    g = p.add_argument_group("what")
    g.add_argument(
        "--model", help="model directory (ours or convert-release output) or random:PRESET"
    )
    g.add_argument("--task", help="HEAR task folder or CSV manifest")
    g.add_argument(
        "--out", dest="out_dir", metavar="RUN", help="run folder (default runs/finetune)"
    )
    g.add_argument(
        "--prediction-type", choices=["multiclass", "multilabel"], help="override the task's"
    )
    g.add_argument("--folds", nargs="+", metavar="FOLD", help="k-fold tasks: only these test folds")
    g.add_argument(
        "--model-set",
        action="append",
        metavar="FIELD=VALUE",
        help="AudioMAEConfig field for random:PRESET (VALUE as JSON), e.g. embed_dim=64; repeatable",
    )
    g = p.add_argument_group("model and recipe")
    g.add_argument(
        "--pooling", choices=["mean", "cls"], help="head input (default mean of patch tokens)"
    )
    g.add_argument(
        "--linear-probe", action=argparse.BooleanOptionalAction, help="freeze the encoder"
    )
    g.add_argument(
        "--drop-path", type=float, help="stochastic depth of the last block (default 0.1)"
    )
    g.add_argument("--epochs", type=int, help="epochs (default 50)")
    g.add_argument("--warmup-epochs", type=float, help="linear warm-up epochs (default 5)")
    g.add_argument(
        "--max-steps", type=int, help="end the schedule after N steps (overrides --epochs)"
    )
    g.add_argument("--stop-after", type=int, help="stop (checkpoint, exit 0) after step N")
    g.add_argument("--batch-size", type=int, help="GLOBAL batch (default 64)")
    g.add_argument(
        "--per-device-batch", type=int, help="micro-batch per device (default batch / devices)"
    )
    g.add_argument("--lr", type=float, help="absolute peak lr (default blr x batch / 256)")
    g.add_argument("--blr", type=float, help="base lr per 256 samples (default 1e-3)")
    g.add_argument("--min-lr", type=float, help="lr at the end of the cosine (default 1e-6)")
    g.add_argument("--layer-decay", type=float, help="layer-wise lr decay (default 0.75; 1 = off)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.05)")
    g.add_argument("--clip-grad", type=float, help="clip the global grad norm (default off)")
    g.add_argument(
        "--samples-per-epoch", type=int, help="crops per epoch (default: one per training clip)"
    )
    g.add_argument("--label-smoothing", type=float, help="multiclass label smoothing (default 0.1)")
    g.add_argument(
        "--mixup", type=float, help="probability of mixup per crop (default 0.5; 0 = off)"
    )
    g.add_argument(
        "--mixup-alpha", type=float, help="Beta(alpha, alpha) of the mixup weight (default 10)"
    )
    g.add_argument(
        "--freq-mask", type=int, help="SpecAugment: max mel bins masked (default 30; 0 = off)"
    )
    g.add_argument(
        "--time-mask", type=int, help="SpecAugment: max frames masked (default 40; 0 = off)"
    )
    g.add_argument(
        "--weighted-sampling",
        choices=["auto", "on", "off"],
        help="draw clips by inverse label frequency (default auto: multilabel tasks)",
    )
    g.add_argument(
        "--eval-every", type=int, help="steps between validations (default: every epoch)"
    )
    g = p.add_argument_group("runtime")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    g.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="default bf16 on CUDA, fp32 on CPU",
    )
    g.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default on CUDA)"
    )
    g.add_argument(
        "--fused-adamw", action=argparse.BooleanOptionalAction, help="fused AdamW (default on CUDA)"
    )
    g.add_argument("--num-workers", type=int, help="DataLoader workers (default 4)")
    g.add_argument(
        "--seed", type=int, help="seed of head init, data order and augmentation (default 0)"
    )
    g.add_argument(
        "--save-every", type=int, help="checkpoint every N steps (default: at every validation)"
    )
    g.add_argument("--log-every", type=int, help="loss lines every N steps (default 10)")
    g.add_argument("--resume", metavar="PATH|auto", help="checkpoint or run folder, or auto")
    g.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, help="progress bar (default on)"
    )
    p.add_argument(
        "--config", metavar="FILE", help="FinetuneConfig JSON (flags given here override it)"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    """FinetuneConfig from defaults <- ``--config`` <- the flags actually given."""
    from ..finetune import FinetuneConfig
    from .pretrain import parse_model_set

    given = vars(args)
    cfg = FinetuneConfig.from_json(given["config"]) if "config" in given else FinetuneConfig()
    changes = {k: v for k, v in given.items() if k not in _NOT_CONFIG}
    overrides = {**cfg.model_overrides, **parse_model_set(given.get("model_set", []))}
    cfg = cfg.replace(**changes, model_overrides=overrides)
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
