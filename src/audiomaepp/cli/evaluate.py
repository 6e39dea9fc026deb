"""``audiomaepp evaluate``: frozen scene embeddings -> MLP probe on HEAR-format tasks -> report.

Example::

    audiomaepp evaluate --tasks hear_tasks/ --models logmel random:base runs/base --out eval/

Writes ``results.md`` / ``summary.csv`` / ``scores.csv`` / ``results.json`` / ``results.png`` to
``--out``, caches embeddings under ``--cache`` (default ``<out>/cache``) and prints the table.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import AudioMAEError
from .options import add_dtype_flag

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command; sets ``func(args) -> int``."""
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate scene embeddings on HEAR-format tasks (MLP probe, seeds, CI, report)",
        description=(
            "Embed every task split with each model (cached), train the spec §7 MLP probe per seed "
            "and fold, and write a Table-2-style report with 95 % CIs and the normalized score."
        ),
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        required=True,
        metavar="DIR",
        help="HEAR task folders, or folders containing task folders",
    )
    p.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="SPEC",
        help="'logmel' (log-mel mean+std baseline), 'random:<preset>' "
        "(random-init encoder) or a model directory",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    p.add_argument(
        "--seeds", type=int, default=10, help="probe seeds per model and task (default 10)"
    )
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (embedding and probe)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="embedding batch size")
    p.add_argument(
        "--cache", default=None, metavar="DIR", help="embedding cache folder (default <out>/cache)"
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached embeddings")
    p.add_argument(
        "--max-epochs", type=int, default=None, help="probe epochs (default 500, the protocol)"
    )
    p.add_argument("--patience", type=int, default=None, help="early-stopping checks (default 20)")
    p.add_argument(
        "--standardize",
        action="store_true",
        help="DEVIATION from hear-eval-kit: standardise each embedding dimension with training "
        "statistics before the probe (the kit feeds raw embeddings)",
    )
    p.add_argument(
        "--layout",
        default=None,
        choices=["release", "time_major"],
        help="token layout for model directories (default: each model's own)",
    )
    p.add_argument("--init-seed", type=int, default=0, help="seed of random:<preset> encoders")
    add_dtype_flag(p, also="part of the embedding cache key")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--mode",
        nargs="+",
        default=["probe"],
        choices=["probe", "finetune", "linear"],
        help="probe: MLP probe on frozen embeddings (the paper's protocol, default); finetune: "
        "fine-tune encoder + head per seed (audiomaepp finetune); linear: frozen encoder + "
        "head trained by the fine-tuning loop. Several modes share one report",
    )
    p.add_argument(
        "--ft-config", metavar="FILE", help="FinetuneConfig JSON for the finetune / linear modes"
    )
    from ..finetune import FinetuneLoop
    from .config_flags import add_field_flags

    # --ft-epochs, --ft-batch-size: the fine-tuning recipe's own fields (help and default)
    add_field_flags(p, FinetuneLoop, ("epochs", "batch_size"), prefix="ft-")
    p.set_defaults(func=run)
    return p


def _probe_overrides(args: argparse.Namespace, device: str) -> dict:
    out: dict = {"device": device}
    if args.max_epochs is not None:
        out["max_epochs"] = args.max_epochs
    if args.patience is not None:
        out["patience"] = args.patience
    if args.standardize:
        out["standardize"] = True
    return out


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; 0 on success, 2 on a bad input (message on stderr)."""
    from pathlib import Path

    from ..devices import resolve_device
    from ..evaluation import make_embedder, markdown_table, run_evaluation

    if args.seeds < 1:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 2
    device = str(resolve_device(args.device))
    cache = None if args.no_cache else (args.cache or str(Path(args.out) / "cache"))
    if args.mode != ["probe"]:
        return _run_modes(args, device, cache)
    try:
        embedders = [
            make_embedder(
                s,
                device=device,
                batch_size=args.batch_size,
                seed=args.init_seed,
                layout=args.layout,
                dtype=args.dtype,
            )
            for s in args.models
        ]
    except (AudioMAEError, ValueError) as exc:  # a mistyped spec or preset name
        print(f"error: --models: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_evaluation(
            embedders,
            args.tasks,
            out_dir=args.out,
            seeds=args.seeds,
            cache_dir=cache,
            progress=not args.quiet,
            **_probe_overrides(args, device),
        )
    except AudioMAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(result))
    log.info("report written to %s", args.out)
    return 0


def _run_modes(args: argparse.Namespace, device: str, cache: str | None) -> int:
    """``--mode finetune`` / ``linear`` (and ``probe`` alongside): one report over every mode."""
    from ..evaluation import markdown_table
    from ..finetune import FinetuneConfig
    from ..finetune.evaluate import EvaluationStopped, run_modes

    try:
        ft = FinetuneConfig.from_json(args.ft_config) if args.ft_config else FinetuneConfig()
        changes = {"device": device.split(":")[0]}
        if args.ft_epochs is not None:
            changes["epochs"] = args.ft_epochs
        if args.ft_batch_size is not None:
            changes["batch_size"] = args.ft_batch_size
        ft = ft.replace(**changes)
        result = run_modes(
            args.models,
            args.tasks,
            args.out,
            args.mode,
            args.seeds,
            ft,
            probe_kwargs={"cache_dir": cache, **_probe_overrides(args, device)},
            progress=not args.quiet,
        )
    except EvaluationStopped as exc:
        log.info("evaluate: %s", exc)
        return 0
    except (AudioMAEError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(result))
    return 0
