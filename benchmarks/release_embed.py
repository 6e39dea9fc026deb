"""Times the authors' release (its own HEAR runtime, ``hear_api.RuntimeMAE``) on one workload.

Run by ``bench_embed`` in a subprocess, so the release's top-level packages (``src``, ``configs``,
``hear_api``) and its dependencies (timm, einops, ml_collections, torchaudio,
rotary-embedding-torch) never mix with ours. The release is read from a throwaway copy given by
``--release`` and is never committed or imported by the package. Its runtime loads the last
``checkpoints/*.pth`` of a folder: we save randomly initialised weights of its own model there
(speed does not depend on the values). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from importlib import import_module


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--release", required=True)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--precision", default="float32", help="float32, bfloat16 or float16 (the release's names)"
    )
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.abspath(args.release))
    os.chdir(args.release)
    from hear_api.runtime import RuntimeMAE
    from src import utilities

    config = import_module(f"configs.maepp_{args.preset}_200_16x4").get_config()
    with tempfile.TemporaryDirectory() as weights:
        os.makedirs(os.path.join(weights, "checkpoints"))
        torch.manual_seed(0)
        model = utilities.get_model(config)
        model = model[0] if isinstance(model, (tuple, list)) else model
        torch.save(
            {"model": model.state_dict()}, os.path.join(weights, "checkpoints", "checkpoint-0.pth")
        )
        del model
        runtime = RuntimeMAE(config=config, weights_dir=weights, precision=args.precision)
    runtime = runtime.to(args.device)
    device = torch.device(args.device)
    audio = (
        torch.rand(
            args.clips, int(16000 * args.seconds), generator=torch.Generator().manual_seed(0)
        )
        - 0.5
    )
    audio = audio.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        runtime.get_scene_embeddings(audio[:2])  # warm-up (kernels, allocator)
        sync()
        times = []
        start = time.perf_counter()
        while len(times) < args.iters and (
            not times or time.perf_counter() - start < args.max_seconds
        ):
            t0 = time.perf_counter()
            out = runtime.get_scene_embeddings(audio)
            sync()
            times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "seconds_per_call": min(times),
                "calls": len(times),
                "all_seconds": times,
                "embedding_shape": list(out.shape),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
