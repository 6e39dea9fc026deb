"""``audiomaepp convert-release CHECKPOINT OUT_DIR (--preset NAME | --release-config JSON)``."""

from __future__ import annotations

import argparse
import logging

from ..model import PRESETS

log = logging.getLogger("audiomaepp.convert")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-release",
        help="convert an authors' release checkpoint (.pth) into a safe model directory",
        description="Reads the release's torch.save checkpoint without executing pickled code and "
        "writes model.safetensors + config.json. The architecture comes from --release-config "
        "(a JSON of the release's model arguments), --preset, or the arguments stored in the "
        "checkpoint.",
    )
    p.add_argument("checkpoint", help="release checkpoint, e.g. checkpoint-99.pth")
    p.add_argument("out_dir", help="model directory to write")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--preset", choices=sorted(PRESETS), help="AudioMAE++ size of the checkpoint"
    )
    group.add_argument(
        "--release-config", metavar="JSON", help="the release's model arguments as JSON"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import CheckpointError
    from ..model.release import convert_release

    try:
        model = convert_release(
            args.checkpoint, args.out_dir, preset=args.preset, release_config=args.release_config
        )
    except CheckpointError as exc:
        log.error("%s", exc)
        return 1
    cfg = model.config
    print(
        f"wrote {args.out_dir}: {cfg.block} encoder {cfg.depth}x{cfg.embed_dim} "
        f"({cfg.num_heads} heads), decoder {cfg.decoder_depth}x{cfg.decoder_embed_dim}, "
        f"{model.num_params() / 1e6:.2f} M parameters, "
        f"token layout {cfg.token_layout!r}"
    )
    return 0
