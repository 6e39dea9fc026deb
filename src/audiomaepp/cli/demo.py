"""``audiomaepp demo [--minutes M] [--out DIR]``: the whole pipeline on a generated corpus."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="generate a corpus, pretrain AudioMAE++ and a vanilla MAE, evaluate both, write a report",
        description="Runs on data the package makes itself: no downloads. On 2 CPU cores the default "
        "finishes within 15 minutes; a GPU is used when present.",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--minutes", type=float, default=11.0, help="target wall time; sets the pretraining steps")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps per model (overrides --minutes)")
    p.add_argument("--probe-seeds", type=int, default=3, help="probe seeds per model and task")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo

    cfg = DemoConfig(out=args.out, minutes=args.minutes, steps=args.steps, probe_seeds=args.probe_seeds,
                     device=args.device, seed=args.seed, progress=not args.quiet)
    result = run_demo(cfg)
    print()
    print(result.table)
    print()
    for line in result.verdicts:
        print("- " + line)
    print(f"\nReport: {result.out / 'DEMO.md'} (chart: {result.out / 'report' / 'results.png'}); "
          f"total {result.timings['total_s'] / 60:.1f} min")
    return 0
