"""The loader under ``torchrun``: ranks x DataLoader workers; rank streams disjoint and complete.

Writes 10-s clips (1 001 x 80 float16) into ``--shards`` shards of ``--clips-per-shard`` each, then
launches ``torch.distributed.run`` with ``--ranks`` processes (gloo). Every rank streams
``--epochs`` epochs with ``--workers`` DataLoader workers and records each crop's clip key and the
epoch's wall time; the parent checks that in every epoch the ranks share no clip and together give
every clip exactly once, and reports crops/s per rank and in total.

    python -m benchmarks.bench_loader_ddp --ranks 2 --workers 2 --epochs 5

The epoch is sized so that exactness is possible: ``shards`` is a multiple of ranks x workers (each
slot owns ``shards / slots`` shards) and the batch divides a slot's clips.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .bench_loader import build_synthetic
from .common import cpu_model, device_info, write_result


def rank_job(shards: str, out: str, epochs: int, workers: int, batch: int) -> None:
    """One rank (inside torchrun): stream ``epochs`` epochs, write keys and timings."""
    import torch.distributed as dist

    from audiomaepp.data import ShardDataset, make_loader

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ds = ShardDataset.from_dir(shards, rank=rank, world_size=world, with_keys=True)
    loader = make_loader(ds, batch, num_workers=workers, pin_memory=False)
    record = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        dist.barrier()  # the ranks start each epoch together
        start = time.perf_counter()
        keys = [k for _, batch_keys in loader for k in batch_keys]
        record.append({"epoch": epoch, "seconds": time.perf_counter() - start, "keys": keys})
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


def check(per_rank: list[list[dict]], clips: int) -> list[dict]:
    """Per epoch: crops per rank, overlap between ranks, whether every clip came exactly once."""
    rows = []
    for epoch in range(len(per_rank[0])):
        streams = [r[epoch]["keys"] for r in per_rank]
        every = [k for s in streams for k in s]
        sets = [set(s) for s in streams]
        overlap = sum(len(a & b) for i, a in enumerate(sets) for b in sets[i + 1 :])
        seconds = max(r[epoch]["seconds"] for r in per_rank)
        rows.append(
            {
                "epoch": epoch,
                "crops_per_rank": [len(s) for s in streams],
                "clips_shared_by_ranks": overlap,
                "every_clip_exactly_once": len(every) == clips == len(set(every)),
                "rank_crops_per_s": [
                    len(s) / r[epoch]["seconds"] for s, r in zip(streams, per_rank, strict=True)
                ],
                "total_crops_per_s": len(every) / seconds,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--clips-per-shard", type=int, default=500)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", default=None)
    p.add_argument("--rank-job", nargs=2, metavar=("SHARDS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rank_job:
        rank_job(*args.rank_job, args.epochs, args.workers, args.batch_size)
        return {}
    slots = args.ranks * args.workers
    per_slot = args.shards // slots * args.clips_per_shard
    if args.shards % slots or per_slot % args.batch_size:
        raise SystemExit("need shards % (ranks * workers) == 0 and a batch that divides a slot")
    clips = args.shards * args.clips_per_shard
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        dirs, data = build_synthetic(Path(tmp), clips, 10.0, 0, [2], args.clips_per_shard)
        data["build_s"] = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.ranks)]
        cmd += ["--master-addr", "127.0.0.1", "--master-port", str(29_400 + os.getpid() % 500)]
        cmd += ["-m", "benchmarks.bench_loader_ddp", "--rank-job", str(dirs[2]), tmp]
        cmd += ["--epochs", str(args.epochs), "--workers", str(args.workers)]
        cmd += ["--batch-size", str(args.batch_size)]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        subprocess.run(cmd, check=True, env=env)
        per_rank = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(args.ranks)]
    rows = check(per_rank, clips)
    steady = rows[1:] or rows  # epoch 0 includes the workers' start
    total = float(np.median([r["total_crops_per_s"] for r in steady]))
    summary = {
        "disjoint_and_complete_every_epoch": all(
            r["every_clip_exactly_once"] and not r["clips_shared_by_ranks"] for r in rows
        ),
        "total_crops_per_s_median": total,
        "per_rank_crops_per_s_median": total / args.ranks,
        "per_worker_crops_per_s_median": total / slots,
    }
    print(json.dumps(summary, indent=1))
    env_info = {**device_info(torch.device("cpu")), "cpu_model": cpu_model()}
    env_info["load_average_after"] = os.getloadavg()[0]
    settings = {k: v for k, v in vars(args).items() if k != "rank_job"}
    write_result(
        "loader_ddp",
        {"settings": settings, "env": env_info, "data": data, "summary": summary, "epochs": rows},
        args.out,
    )
    return summary


if __name__ == "__main__":
    main()
