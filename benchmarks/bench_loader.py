"""Loader throughput: standardised 200x80 crops per second streamed from shards.

Makes its own data (the synthetic pool, prepared into shards) unless ``--shards`` is given.

    python -m benchmarks.bench_loader --workers 16 --clips 2000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from audiomaepp.data import PrepareConfig, ShardDataset, make_loader, prepare_shards

from .common import device_info, write_result


def build_shards(root: Path, clips: int, workers: int) -> tuple[Path, dict]:
    from audiomaepp.synth import CorpusConfig, generate_corpus

    t0 = time.perf_counter()
    corpus = generate_corpus(
        root / "corpus", CorpusConfig(n_pool=clips, n_per_task=12), workers=workers
    )
    t1 = time.perf_counter()
    report = prepare_shards(
        [corpus.pool_dir],
        root / "shards",
        PrepareConfig(workers=workers, shard_size_mb=64),
        progress=False,
    )
    t2 = time.perf_counter()
    return root / "shards", {
        "generate_s": t1 - t0,
        "prepare_s": t2 - t1,
        "prepare_files_per_s": report.files_per_s,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shards", default=None, help="existing shard folder (default: make one)")
    p.add_argument("--clips", type=int, default=2000, help="clips to generate when making shards")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=20.0, help="how long to stream")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        prep = {}
        shards = Path(args.shards) if args.shards else None
        if shards is None:
            shards, prep = build_shards(Path(tmp), args.clips, args.workers)
        ds = ShardDataset.from_dir(shards, samples_per_epoch=10**8)
        loader = make_loader(
            ds, args.batch_size, num_workers=args.workers, pin_memory=torch.cuda.is_available()
        )
        it = iter(loader)
        next(it)  # workers started, first batch through
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            n += next(it).shape[0]
        rate = n / (time.perf_counter() - start)
    print(f"loader: {rate:.0f} crops/s with {args.workers} workers; {prep}")
    row = {"crops_per_s": rate, "workers": args.workers, "batch_size": args.batch_size, **prep}
    write_result(
        "loader",
        {"settings": vars(args), "env": device_info(torch.device("cpu")), "results": [row]},
        args.out,
    )
    return row


if __name__ == "__main__":
    main()
