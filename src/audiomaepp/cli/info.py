"""``audiomaepp info [PRESET | MODEL_DIR]``: sizes, parameter counts and FLOPs of a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model import PRESETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="print a preset's or model directory's size, parameters and FLOPs"
    )
    p.add_argument(
        "what",
        nargs="*",
        default=sorted(PRESETS, key=lambda n: PRESETS[n][2]),
        help="preset names or model directories (default: all presets)",
    )
    p.add_argument("--block", choices=["plusplus", "vanilla"], default="plusplus")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model import AudioMAE, AudioMAEConfig
    from ..model.io import read_config

    print(
        f"{'model':<24}{'block':<10}{'enc':>12}{'dec':>10}"
        f"{'enc+patch M':>13}{'MAE M':>9}{'GFLOP/sample':>14}"
    )
    for item in args.what:
        cfg = (
            read_config(item)
            if Path(item).is_dir()
            else AudioMAEConfig.preset(item, block=args.block)
        )
        with _meta_device():
            model = AudioMAE(cfg)
        print(
            f"{Path(item).name:<24}{cfg.block:<10}{f'{cfg.depth}x{cfg.embed_dim}':>12}"
            f"{f'{cfg.decoder_depth}x{cfg.decoder_embed_dim}':>10}"
            f"{model.num_params(True) / 1e6:>13.2f}"
            f"{model.num_params() / 1e6:>9.2f}{model.flops_per_sample() / 1e9:>14.1f}"
        )
    return 0


def _meta_device():
    import torch

    return torch.device("meta")  # no memory, no init cost: counting needs shapes only
