"""Feature extraction, front end included: seconds of audio embedded per second, ours and the
authors' release side by side in one run, and the machine's matmul-bound ceiling.

Workload (the speed issue's): 32 clips x 10 s per call, scene embeddings, random-init weights.

    # CPU (fp32): tiny and base, the release from a throwaway copy (never committed)
    python -m benchmarks.bench_embed --presets tiny base --release /tmp/release
    # GPU (bf16, torch.compile): base
    python -m benchmarks.bench_embed --presets base --device cuda --release /tmp/release

The ceiling: fp32 (bf16 on CUDA) matmul FLOP/s measured here, divided by the encoder's matmul
FLOPs per second of audio. "nominal" counts 2 s of audio per 2-s chunk; a 10-s clip needs 6
chunks (1 001 frames: the last chunk holds one frame), so the workload's own ceiling is 10/12 of it.
The release runs in a subprocess (``benchmarks/release_embed.py``) in the Python given by
``--release-python`` (default: this one), which must have its dependencies.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from audiomaepp import AudioMAE, AudioMAEConfig
from audiomaepp.embedding import Embedder

from .common import device_info, sync, write_result

RELEASE_PRECISION = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 3.0) -> dict:
    """Best FLOP/s of square matmuls (the peak) and of the tiny / base encoders' FFN shape."""
    shapes = {
        "square_2048": (2048, 2048, 2048),
        "square_1024": (1024, 1024, 1024),
        "tiny_ffn_8032x192x768": (32 * 251, 192, 768),
        "base_ffn_8032x768x3072": (32 * 251, 768, 3072),
    }
    out = {}
    for name, (m, k, n) in shapes.items():
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        a @ b
        sync(device)
        best, start = float("inf"), time.perf_counter()
        while time.perf_counter() - start < seconds / len(shapes):
            t0 = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - t0)
        out[name] = 2 * m * k * n / best
    return out


def time_calls(fn, device: torch.device, iters: int, max_seconds: float) -> list[float]:
    """Seconds per call, at least one call, up to ``iters`` calls or ``max_seconds``."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters and (not times or time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def run_ours(
    preset: str,
    audio: torch.Tensor,
    device: torch.device,
    dtype: str,
    batch_size: int | None,
    iters: int,
    max_seconds: float,
    warmup: int,
) -> dict:
    emb = Embedder.random_init(preset, device=str(device), batch_size=batch_size, dtype=dtype)
    with torch.no_grad():
        for _ in range(
            warmup
        ):  # kernels, allocator and (CUDA) the compiled graphs for both batch shapes
            emb.scene_embeddings(audio if device.type == "cuda" else audio[:2])
        sync(device)
        times = time_calls(lambda: emb.scene_embeddings(audio), device, iters, max_seconds)
    return {
        "seconds_per_call": min(times),
        "all_seconds": times,
        "batch_size": emb.batch_size,
        "compiled": emb._compiled is not None,
        "dtype": emb._dtype_name(),
    }


def run_release(
    release: str, python: str, preset: str, args, device: torch.device, precision: str
) -> dict:
    cmd = [
        python,
        str(Path(__file__).with_name("release_embed.py")),
        "--release",
        release,
        "--preset",
        preset,
        "--device",
        str(device),
        "--precision",
        precision,
        "--clips",
        str(args.clips),
        "--seconds",
        str(args.seconds),
        "--iters",
        str(args.iters),
        "--max-seconds",
        str(args.max_seconds),
        "--threads",
        str(torch.get_num_threads()),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.max_seconds * 4 + 600)
    if res.returncode != 0:
        return {"error": (res.stderr or res.stdout)[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--presets", nargs="+", default=["tiny", "base"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument(
        "--batch-size", type=int, default=None, help="default: the Embedder's (64 CPU, 256 CUDA)"
    )
    p.add_argument(
        "--iters", type=int, default=3, help="timed calls per implementation (the best counts)"
    )
    p.add_argument(
        "--max-seconds", type=float, default=300.0, help="time box per implementation and preset"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument(
        "--release", default=None, help="a throwaway copy of the authors' release to run alongside"
    )
    p.add_argument(
        "--release-python", default=sys.executable, help="the Python that has the release's deps"
    )
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    mm_dtype = torch.float32 if dtype == "float32" else getattr(torch, dtype)
    mm = matmul_flops(device, mm_dtype)
    peak = max(mm.values())
    print(
        f"matmul {dtype}: peak {peak / 1e9:.1f} GFLOP/s ({', '.join(f'{k} {v / 1e9:.1f}' for k, v in mm.items())})"
    )
    audio = (
        torch.rand(
            args.clips, int(16000 * args.seconds), generator=torch.Generator().manual_seed(0)
        )
        - 0.5
    ).to(device)
    audio_s = args.clips * args.seconds
    rows = []
    for preset in args.presets:
        model = AudioMAE(AudioMAEConfig.preset(preset))
        flops_chunk = model.encoder_flops_per_chunk()
        chunks_per_clip = Embedder(model).plan(audio.shape[-1]).num_chunks
        del model
        ceiling = peak / (flops_chunk / 2.0)  # s of audio / s at peak, 2 s per chunk
        workload_ceiling = peak / (flops_chunk * chunks_per_clip / args.seconds)
        row = {
            "preset": preset,
            "dtype": dtype,
            "encoder_gflop_per_chunk": flops_chunk / 1e9,
            "chunks_per_clip": chunks_per_clip,
            "ceiling_audio_s_per_s": ceiling,
            "workload_ceiling_audio_s_per_s": workload_ceiling,
        }
        warmup = 3 if device.type == "cuda" else 1
        ours = run_ours(
            preset, audio, device, dtype, args.batch_size, args.iters, args.max_seconds, warmup
        )
        ours["audio_seconds_per_second"] = audio_s / ours["seconds_per_call"]
        row["ours"] = ours
        print(
            f"{preset} ours: {ours['audio_seconds_per_second']:.1f} s of audio / s "
            f"({100 * ours['audio_seconds_per_second'] / ceiling:.0f} % of the {ceiling:.1f} ceiling, "
            f"{100 * ours['audio_seconds_per_second'] / workload_ceiling:.0f} % of the workload's {workload_ceiling:.1f})"
        )
        if args.release:
            rel = run_release(
                args.release, args.release_python, preset, args, device, RELEASE_PRECISION[dtype]
            )
            if "seconds_per_call" in rel:
                rel["audio_seconds_per_second"] = audio_s / rel["seconds_per_call"]
                row["speedup_vs_release"] = (
                    ours["audio_seconds_per_second"] / rel["audio_seconds_per_second"]
                )
                print(
                    f"{preset} release: {rel['audio_seconds_per_second']:.1f} s of audio / s; "
                    f"ours is {row['speedup_vs_release']:.2f}x"
                )
            else:
                print(f"{preset} release failed: {rel['error'][-500:]}")
            row["release"] = rel
        row["fraction_of_ceiling"] = ours["audio_seconds_per_second"] / ceiling
        row["fraction_of_workload_ceiling"] = ours["audio_seconds_per_second"] / workload_ceiling
        rows.append(row)
    env = device_info(device) | {"threads": torch.get_num_threads()}
    payload = {
        "settings": vars(args),
        "env": env,
        "matmul_flops": mm,
        "peak_matmul_flops": peak,
        "results": rows,
    }
    path = write_result(f"embed_{device.type}", payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
