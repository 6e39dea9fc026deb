"""Feature-extraction throughput: seconds of audio embedded per second, front end included.

Workload of the speed issue: 32 clips x 10 s per call, scene embeddings of a base model.

    python -m benchmarks.bench_embed --preset base --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from audiomaepp.embedding import Embedder

from .common import device_info, timed, write_result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="base")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--dtypes", nargs="+", default=None, help="default: bfloat16 float32 on GPU, float32 on CPU")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtypes = args.dtypes or (["bfloat16", "float32"] if device.type == "cuda" else ["float32"])
    audio = (torch.rand(args.clips, int(16000 * args.seconds), generator=torch.Generator().manual_seed(0)) - 0.5)
    audio = audio.to(device)
    rows = []
    for dtype in dtypes:
        emb = Embedder.random_init(args.preset, device=str(device), batch_size=args.batch_size, dtype=dtype)
        t0 = time.perf_counter()
        sec = timed(lambda e=emb: e.scene_embeddings(audio), device, warmup=2, iters=args.iters)
        rows.append({"dtype": dtype, "audio_seconds_per_second": args.clips * args.seconds / sec,
                     "seconds_per_call": sec, "wall_s": time.perf_counter() - t0,
                     "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None})
        print(f"embed {args.preset} {dtype}: {rows[-1]['audio_seconds_per_second']:.0f} s of audio / s")
        del emb
    return {"path": str(write_result(f"embed_{args.preset}_{device.type}", {
        "settings": vars(args), "env": device_info(device), "results": rows}, args.out)), "results": rows}


if __name__ == "__main__":
    main()
