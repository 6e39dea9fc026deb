"""Feature extraction, front end included: seconds of audio embedded per second for every
precision and backend of ours and for the authors' release, side by side in one run, against the
matmul-bound ceiling measured at the start of the same run.

Workload (the speed issue's): clips x 10 s per call (32 for tiny, 8 for base), scene embeddings,
random-init weights, best call of ``--iters`` counts; the paths of one preset run round-robin
(call 1 of each, then call 2 of each, ...), so slow drift of a shared machine hits them alike.

    # CPU: tiny and base, every path, the release from a throwaway copy (never committed)
    python -m benchmarks.bench_embed --threads 2 --release /tmp/release \\
        --release-python /tmp/releaseenv/bin/python
    # the same with oneDNN limited to AVX512-VNNI (a CPU without bf16 units, emulated)
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI python -m benchmarks.bench_embed --threads 2 --tag no_bf16

Paths: ``eager-float32`` (the plain modules: the code before the fused path), ``float32`` and
``bfloat16`` (the oneDNN-fused encoder), ``int8`` (dynamic quantisation), ``onnxruntime-float32``
/ ``onnxruntime-int8`` (ONNX Runtime, the Embedder's front end), ``release-float32`` (the release
runs its CPU path in fp32 whatever ``precision`` it is given: its autocast is CUDA-only).

The ceiling: the best fp32 matmul FLOP/s measured here (MKL's ``torch.mm`` and oneDNN's packed
linear, square and the encoders' own shapes), divided by the encoder's matmul FLOPs per second of
audio. "nominal" counts 2 s of audio per 2-s chunk; a 10-s clip needs 6 chunks (1 001 frames: the
last chunk holds one frame), so the workload's own ceiling is 10/12 of it. Relative errors are
``|e - e_fp32| / |e_fp32|`` over the workload's scene embeddings (Frobenius norms).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from audiomaepp import AudioMAE, AudioMAEConfig
from audiomaepp.embedding import Embedder
from audiomaepp.embedding.precision import cpu_features, resolve_precision

from .common import device_info, sync, write_result

PATHS = (
    "eager-float32",
    "float32",
    "bfloat16",
    "int8",
    "onnxruntime-float32",
    "onnxruntime-int8",
)
MM_SHAPES = {
    "square_2048": (2048, 2048, 2048),
    "tiny_ffn_16064x192x768": (64 * 251, 192, 768),
    "base_ffn_16064x768x3072": (64 * 251, 768, 3072),
}


def _best(fn, seconds: float) -> float:
    fn()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_flops(device: torch.device, seconds: float = 6.0) -> dict:
    """Best FLOP/s per library, precision and shape: MKL (``torch.mm``, what ``nn.Linear`` uses)
    and oneDNN's packed linear (what the fused encoder uses) in fp32, oneDNN in bf16 (CUDA:
    ``torch.mm`` in fp32 and bf16)."""
    if device.type == "cuda":
        out = {}
        for dtype in ("float32", "bfloat16"):
            a = torch.randn(8192, 8192, device=device, dtype=getattr(torch, dtype))

            def mm(a=a):
                a @ a
                sync(device)

            out[f"cuda_{dtype}"] = {"square_8192": 2 * 8192**3 / _best(mm, seconds / 2)}
        return out
    out: dict[str, dict[str, float]] = {"mkl_float32": {}, "onednn_float32": {}}
    out["onednn_bfloat16"] = {}
    per = seconds / (len(MM_SHAPES) * 3)
    for name, (m, k, n) in MM_SHAPES.items():
        a, w = torch.randn(m, k), torch.randn(n, k)
        flops = 2 * m * k * n
        out["mkl_float32"][name] = flops / _best(lambda a=a, w=w: a @ w.t(), per)
        for dtype in ("float32", "bfloat16"):
            ad, wd = a.to(getattr(torch, dtype)), w.to(getattr(torch, dtype))
            packed = torch.ops.mkldnn._reorder_linear_weight(wd, m)

            def linear(ad=ad, packed=packed):
                return torch.ops.mkldnn._linear_pointwise(ad, packed, None, "none", [], "")

            out[f"onednn_{dtype}"][name] = flops / _best(linear, per)
    return out


def make_path(path: str, preset: str, batch_size: int | None, device: torch.device) -> Embedder:
    if device.type == "cuda":  # eager modules, compiled, autocast for bf16
        return Embedder.random_init(preset, device=str(device), batch_size=batch_size, dtype=path)
    if path.startswith("onnxruntime"):
        from audiomaepp.export.onnx import use_onnxruntime

        emb = Embedder.random_init(preset, device="cpu", batch_size=batch_size, dtype="float32")
        use_onnxruntime(emb, path.split("-", 1)[1])
        return emb
    eager = path.startswith("eager-")
    dtype = path.removeprefix("eager-")
    return Embedder.random_init(
        preset, device="cpu", batch_size=batch_size, dtype=dtype, fused=False if eager else None
    )


def run_release(release: str, python: str, preset: str, clips: int, args) -> dict:
    cmd = [
        python,
        str(Path(__file__).with_name("release_embed.py")),
        "--release",
        release,
        "--preset",
        preset,
        "--device",
        str(args.device),
        "--precision",
        "float32" if args.device.type == "cpu" else "bfloat16",
        "--clips",
        str(clips),
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


def bench_preset(preset: str, clips: int, args, peak_fp32: float) -> dict:
    audio = torch.rand(clips, int(16000 * args.seconds), generator=torch.Generator().manual_seed(0))
    audio = (audio - 0.5).to(args.device)
    audio_s = clips * args.seconds
    model = AudioMAE(AudioMAEConfig.preset(preset))
    flops_chunk = model.encoder_flops_per_chunk()
    chunks_per_clip = Embedder(model).plan(audio.shape[-1]).num_chunks
    del model
    row: dict = {
        "preset": preset,
        "clips": clips,
        "encoder_gflop_per_chunk": flops_chunk / 1e9,
        "chunks_per_clip": chunks_per_clip,
        "ceiling_fp32_audio_s_per_s": peak_fp32 / (flops_chunk / 2.0),
        "workload_ceiling_fp32_audio_s_per_s": peak_fp32
        / (flops_chunk * chunks_per_clip / args.seconds),
    }
    embedders = {p: make_path(p, preset, args.batch_size, args.device) for p in args.paths}
    times: dict[str, list[float]] = {p: [] for p in embedders}
    outputs = {}
    with torch.no_grad():
        for emb in embedders.values():  # warm-up: packing, allocator, ORT's first run
            for _ in range(3 if args.device.type == "cuda" else 1):  # CUDA: both compiled shapes
                emb.scene_embeddings(audio if args.device.type == "cuda" else audio[:2])
        start = time.perf_counter()
        for it in range(args.iters):
            if it and time.perf_counter() - start > args.max_seconds * len(embedders):
                break
            for p, emb in embedders.items():
                t0 = time.perf_counter()
                out = emb.scene_embeddings(audio)
                sync(args.device)
                times[p].append(time.perf_counter() - t0)
                outputs[p] = out
    ref = outputs.get("float32", outputs.get("eager-float32"))
    results = {}
    for p, emb in embedders.items():
        best = min(times[p])
        res = {
            "seconds_per_call": best,
            "all_seconds": times[p],
            "audio_seconds_per_second": audio_s / best,
            "precision": emb.precision,
            "backend": emb.backend,
            "batch_size": emb.batch_size,
        }
        if ref is not None:
            res["relative_error_vs_fp32"] = float((outputs[p] - ref).norm() / ref.norm())
        results[p] = res
        print(
            f"{preset} {p:>20}: {res['audio_seconds_per_second']:7.2f} s of audio / s"
            + (f"  rel. err {res['relative_error_vs_fp32']:.1e}" if ref is not None else "")
        )
    if args.release:
        rel = run_release(args.release, args.release_python, preset, clips, args)
        if "seconds_per_call" in rel:
            rel["audio_seconds_per_second"] = audio_s / rel["seconds_per_call"]
            print(f"{preset} {'release-float32':>20}: {rel['audio_seconds_per_second']:7.2f}")
        else:
            print(f"{preset} release failed: {rel['error'][-500:]}")
        results["release-float32"] = rel
    row["paths"] = results
    _ratios(row)
    return row


def _ratios(row: dict) -> None:
    paths = row["paths"]
    speed = {p: r["audio_seconds_per_second"] for p, r in paths.items() if "seconds_per_call" in r}
    ours = {p: s for p, s in speed.items() if p != "release-float32"}
    if "float32" in speed:
        row["fp32_fraction_of_ceiling"] = speed["float32"] / row["ceiling_fp32_audio_s_per_s"]
        row["fp32_fraction_of_workload_ceiling"] = (
            speed["float32"] / row["workload_ceiling_fp32_audio_s_per_s"]
        )
        row["speedup_vs_our_fp32"] = {p: s / speed["float32"] for p, s in ours.items()}
    if "release-float32" in speed:
        row["speedup_vs_release"] = {p: s / speed["release-float32"] for p, s in ours.items()}
    if ours:
        best = max(ours, key=ours.get)
        row["best_path"] = best
        print(
            f"{row['preset']}: best path {best}"
            + (
                f", {row['speedup_vs_our_fp32'][best]:.2f}x our fp32"
                if "speedup_vs_our_fp32" in row
                else ""
            )
            + (
                f", {row['speedup_vs_release'][best]:.2f}x the release"
                if "speedup_vs_release" in row
                else ""
            )
            + (
                f"; fp32 at {100 * row['fp32_fraction_of_ceiling']:.0f} % of the ceiling"
                if "fp32_fraction_of_ceiling" in row
                else ""
            )
        )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--presets", nargs="+", default=["tiny", "base"])
    p.add_argument("--device", default="cpu", help="cpu, or cuda (paths float32 / bfloat16)")
    p.add_argument("--paths", nargs="+", default=None, choices=PATHS, help="default: all (CPU)")
    p.add_argument("--clips", type=int, default=32, help="clips per call (tiny)")
    p.add_argument("--base-clips", type=int, default=8, help="clips per call for base and larger")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=None, help="default: the Embedder's")
    p.add_argument("--iters", type=int, default=3, help="timed calls per path (the best counts)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="time box per path and preset")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--release", default=None, help="a throwaway copy of the authors' release")
    p.add_argument("--release-python", default=sys.executable, help="Python with its deps")
    p.add_argument("--tag", default="", help="suffix of the result file (embed_cpu_<tag>.json)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    if args.paths is None:
        args.paths = list(PATHS) if args.device.type == "cpu" else ["bfloat16"]
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    feats = cpu_features()
    print(f"CPU: {feats.model} ({feats}); torch threads {args.threads}")
    mm = matmul_flops(args.device)
    peak = {lib: max(v.values()) for lib, v in mm.items()}
    peak_fp32 = max(v for k, v in peak.items() if k.endswith("float32"))
    print("matmul peaks (GFLOP/s): " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peak.items()))
    rows = []
    for preset in args.presets:
        clips = args.clips if preset == "tiny" or args.device.type == "cuda" else args.base_clips
        rows.append(bench_preset(preset, clips, args, peak_fp32))
    env = device_info(args.device) | {
        "threads": args.threads,
        "cpu": feats.model,
        "cpu_features": vars(feats),
        "auto_precision": resolve_precision("auto", torch.device("cpu"), feats),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "load_average_at_end": os.getloadavg(),
    }
    payload = {
        "settings": vars(args) | {"device": str(args.device)},
        "env": env,
        "matmul_flops": mm,
        "peak_matmul_flops": peak,
        "peak_fp32_matmul_flops": peak_fp32,
        "results": rows,
    }
    name = f"embed_{args.device.type}" + (f"_{args.tag}" if args.tag else "")
    path = write_result(name, payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
