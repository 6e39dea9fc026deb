"""Entry point of the ``audiomaepp`` command.

Each sub-command lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func(args) -> int``. Modules are imported lazily by name so a
broken optional piece never takes the whole command down.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Sub-command modules, in the order they appear in ``--help``.
COMMANDS = [
    "info",
    "convert_release",
    "prepare",
    "pretrain",
    "embed",
    "export_onnx",
    "evaluate",
    "finetune",
    "predict",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiomaepp",
        description="AudioMAE++: pretrain, convert, embed and evaluate masked audio autoencoders.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"audiomaepp.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"audiomaepp.cli.{name}":
                continue  # sub-command not present in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
