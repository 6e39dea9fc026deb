"""``audiomaepp pretrain``: masked-autoencoder pretraining (spec §6), one process or ``torchrun``.

Settings come from :class:`audiomaepp.training.TrainConfig` defaults, then ``--config FILE``
(JSON), then the flags given on the command line (a flag left out never overrides the file).
"""

from __future__ import annotations

import argparse
import json
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

# flag dest -> AudioMAEConfig field (model overrides)
_MODEL_FLAGS = {
    "block": "block",
    "decoder_block": "decoder_block",
    "encoder_rope": "encoder_rope",
    "decoder_rope": "decoder_rope",
    "swiglu_norm": "swiglu_norm",
    "norm_pix_loss": "norm_pix_loss",
    "mask_ratio": "mask_ratio",
}
_NOT_CONFIG = {"config", "model_set", "print_config", "func", "command", "verbose", *_MODEL_FLAGS}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pretrain`` sub-command."""
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a masked autoencoder (one process or torchrun)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    _model_args(p.add_argument_group("model"))
    _data_args(p.add_argument_group("data and run directory"))
    _schedule_args(p.add_argument_group("schedule and optimizer"))
    _runtime_args(p.add_argument_group("runtime"))
    _bookkeeping_args(p.add_argument_group("checkpoints, logs and faults"))
    p.add_argument(
        "--config", metavar="FILE", help="TrainConfig JSON file (flags given here override it)"
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved TrainConfig JSON and exit"
    )
    p.set_defaults(func=run)


def _model_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--preset", help="model size: tiny, small, medium, base, large, huge (default: base)"
    )
    g.add_argument(
        "--block",
        choices=["plusplus", "vanilla"],
        help="plusplus = AudioMAE++ (default), vanilla = MAE",
    )
    g.add_argument(
        "--decoder-block",
        choices=["plusplus", "vanilla"],
        help="decoder block (default: as --block)",
    )
    g.add_argument(
        "--encoder-rope",
        choices=["none", "sequence", "grid"],
        help="RoPE in the encoder (default none)",
    )
    g.add_argument(
        "--decoder-rope",
        choices=["none", "sequence", "grid"],
        help="RoPE in the decoder (default none)",
    )
    g.add_argument(
        "--swiglu-norm",
        choices=["ln2", "ln3"],
        help="ln2 = the release's wiring (default), ln3 = fixed",
    )
    g.add_argument(
        "--norm-pix-loss",
        action=argparse.BooleanOptionalAction,
        help="per-patch normalised targets",
    )
    g.add_argument("--mask-ratio", type=float, help="fraction of patches removed (default 0.8)")
    g.add_argument(
        "--model-set",
        action="append",
        metavar="FIELD=VALUE",
        help="any AudioMAEConfig field (VALUE as JSON), e.g. embed_dim=256; repeatable",
    )


def _data_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--data",
        metavar="SOURCE",
        help="shard folder (manifest), .tar glob, or audio folder / list",
    )
    g.add_argument(
        "--out", dest="out_dir", metavar="RUN_DIR", help="run directory (default runs/pretrain)"
    )
    g.add_argument(
        "--samples-per-epoch", type=int, help="crops per epoch (default: one per stored clip)"
    )
    g.add_argument("--num-workers", type=int, help="DataLoader workers per rank (default 8)")
    g.add_argument(
        "--shuffle-buffer", type=int, help="clips in each worker's shuffle buffer (default 5000)"
    )


def _schedule_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--epochs", type=int, help="epochs (default 100)")
    g.add_argument(
        "--max-steps",
        type=int,
        help="end the schedule after N optimizer steps (overrides --epochs)",
    )
    g.add_argument(
        "--stop-after", type=int, help="stop (checkpoint, exit 0) after step N; schedule unchanged"
    )
    g.add_argument("--warmup-epochs", type=float, help="linear warm-up epochs (default 10)")
    g.add_argument(
        "--warmup-steps", type=int, help="linear warm-up steps (overrides --warmup-epochs)"
    )
    g.add_argument(
        "--batch-size",
        type=int,
        help="GLOBAL batch over all devices and accumulation (default 1024)",
    )
    g.add_argument(
        "--per-device-batch", type=int, help="micro-batch per device (default: batch / devices)"
    )
    g.add_argument("--lr", type=float, help="absolute peak lr (default: blr x batch / 256)")
    g.add_argument("--blr", type=float, help="base lr per 256 samples (default 1.5e-4)")
    g.add_argument("--min-lr", type=float, help="lr at the end of the cosine (default 0)")
    g.add_argument(
        "--weight-decay", type=float, help="AdamW weight decay on matrices (default 0.05)"
    )
    g.add_argument(
        "--clip-grad", type=float, help="clip the global grad norm to this (default: no clipping)"
    )


def _runtime_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="default auto (CUDA if available)"
    )
    g.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="autocast dtype (default: bf16 on CUDA, fp32 on CPU; fp16 adds a grad scaler)",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the forward + loss (default: on for CUDA, off on CPU)",
    )
    g.add_argument(
        "--fused-adamw",
        action=argparse.BooleanOptionalAction,
        help="fused AdamW (default: on CUDA)",
    )
    g.add_argument(
        "--seed", type=int, help="seed of model init, masking and data order (default 0)"
    )


def _bookkeeping_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--save-every",
        type=int,
        help="checkpoint every N steps (default 1000; 0 = only at the end)",
    )
    g.add_argument("--keep-last", type=int, help="checkpoints kept (default 3; 0 = all)")
    g.add_argument("--log-every", type=int, help="metrics every N steps (default 50)")
    g.add_argument(
        "--viz-every", type=int, help="reconstruction PNG every N steps (default 1000; 0 = off)"
    )
    g.add_argument(
        "--resume",
        metavar="PATH|auto",
        help="checkpoint or run folder, or auto = latest in RUN_DIR",
    )
    g.add_argument(
        "--max-nonfinite", type=int, help="stop after K non-finite steps in a row (default 5)"
    )
    g.add_argument(
        "--peak-tflops", type=float, help="per-device peak TFLOP/s for MFU (default: by GPU name)"
    )
    g.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        help="TensorBoard events if installed",
    )
    g.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, help="tqdm progress bar (default on)"
    )
    g.add_argument(
        "--export", action=argparse.BooleanOptionalAction, help="write RUN_DIR/model at the end"
    )


def parse_model_set(items: list[str]) -> dict[str, Any]:
    """``--model-set FIELD=VALUE`` items -> model config overrides (JSON values, else text)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model-set {item!r}: expected FIELD=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value  # bare strings: --model-set block=vanilla
    return out


def build_config(args: argparse.Namespace) -> Any:
    """TrainConfig from defaults <- ``--config`` file <- the flags actually given."""
    from ..training import TrainConfig

    given = vars(args)
    cfg = TrainConfig.from_json(given["config"]) if "config" in given else TrainConfig()
    changes = {k: v for k, v in given.items() if k not in _NOT_CONFIG}
    model = dict(cfg.model)
    model.update({_MODEL_FLAGS[k]: v for k, v in given.items() if k in _MODEL_FLAGS})
    model.update(parse_model_set(given.get("model_set", [])))
    cfg = cfg.replace(**changes, model=model)
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
