"""``audiomaepp prepare``: audio files -> log-mel webdataset shards + manifest.

Resumable, and splittable across nodes.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Decode audio files (any format libsndfile reads; mixed to mono, resampled to 16 kHz), compute each
clip's unnormalised log-mel (T, 80) and write it as float16 into webdataset tar shards in --out,
with a manifest.json listing shards, clip counts and every skipped file with its reason.

Re-running the same command continues an interrupted run (finished shards are kept). To split the
work over machines, run with the same inputs and --num-nodes N --node-rank R on each (R = 0..N-1);
the parts are merged into manifest.json when all are done (or run with --merge afterwards).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` sub-command."""
    from ..data.prepare import PrepareConfig, default_workers

    p = subparsers.add_parser(
        "prepare",
        help="audio files -> log-mel shards for pretraining",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="folders (searched recursively), quoted globs, or .txt files listing paths",
    )
    p.add_argument("--out", required=True, type=Path, metavar="SHARD_DIR", help="output folder")
    p.add_argument(
        "--shard-size-mb",
        type=float,
        default=PrepareConfig.shard_size_mb,
        help="target shard size in MB (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"decoding processes (default: min(8, cpus) = {default_workers()}; 1 = in process)",
    )
    p.add_argument(
        "--num-nodes", type=int, default=1, help="machines splitting the files (default: 1)"
    )
    p.add_argument(
        "--node-rank", type=int, default=0, help="this machine, 0..num-nodes-1 (default: 0)"
    )
    p.add_argument(
        "--min-duration",
        type=float,
        default=PrepareConfig.min_duration_s,
        help="skip clips shorter than this many seconds (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=PrepareConfig.seed,
        help="seed of the order files are dealt to shards (default: %(default)s)",
    )
    p.add_argument(
        "--segment-s",
        type=float,
        default=PrepareConfig.segment_s,
        help="cut files longer than this many seconds into segments of this length, decoded piece "
        "by piece (default: %(default)s; 0 keeps every file whole)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="only merge the manifest-rNN.json parts in --out into manifest.json",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace this node's shards if --out holds another input list or config",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``prepare`` (or only the merge); prints a one-screen summary. Returns the exit code."""
    from ..data.prepare import PrepareConfig, default_workers, prepare_shards
    from ..data.shards import merge_manifests

    if args.merge:
        manifest = merge_manifests(args.out)
        print(
            f"merged {len(manifest['parts'])} parts: {manifest['clips']} clips, "
            f"{manifest['hours']:.2f} h, {len(manifest['shards'])} shards "
            f"-> {args.out / 'manifest.json'}"
        )
        return 0
    if not args.inputs:
        logger.error("prepare: give at least one INPUT (or --merge)")
        return 2
    cfg = PrepareConfig(
        shard_size_mb=args.shard_size_mb,
        workers=args.workers if args.workers is not None else default_workers(),
        num_nodes=args.num_nodes,
        node_rank=args.node_rank,
        min_duration_s=args.min_duration,
        seed=args.seed,
        segment_s=args.segment_s or None,
    )
    report = prepare_shards(
        args.inputs, args.out, cfg, overwrite=args.overwrite, progress=not args.no_progress
    )
    m = report.manifest
    reasons = Counter(s["reason"] for s in m["skipped"])
    print(
        f"{m['clips']} clips, {m['hours']:.2f} h, {len(m['shards'])} shards "
        f"({report.reused_shards} kept from an earlier run) -> {report.manifest_path}"
    )
    print(
        f"decoded {report.processed} files in {report.elapsed_s:.1f} s "
        f"({report.files_per_s:.1f} files/s)"
    )
    if m["skipped"]:
        print(
            f"skipped {len(m['skipped'])} files: "
            + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
        )
    return 0
