"""Probe speed: the fused stacked probe vs the probe before it, and vs the matmul floor.

Scores the CI fixture's ready-made log-mel embeddings of ``synth_family`` and ``synth_mix``
(``tests/fixtures/heareval_golden.npz``, the demo's tasks, float16-rounded) with the full protocol
(``probe_folds``: 10 seeds x 2 dropouts on the grid fold, early stopping) in one run:

- ``old``: the probe of another source tree (``--old-src``, e.g. ``git archive main src | tar -x
  -C /tmp/i17old``), in a subprocess, same thread count;
- ``new``: this tree's probe; every ``fit_members`` call is recorded so that the matrix-product
  FLOPs actually executed (members x epochs each stayed in the stack, validation passes, test
  predictions) can be counted;
- ``peak``: fp32 matrix-product throughput of ``torch.mm`` on 2048 x 2048 operands (best of a few),
  measured first, same threads. ``floor = executed FLOPs / peak``; ``% of floor = floor / seconds``.

    python -m benchmarks.bench_probe --old-src /tmp/i17old/src --threads 1

Writes ``benchmarks/results/probe_speed.json`` (``--out`` to change the name).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cpu_model, device_info, write_result

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "heareval_golden"
TASKS = ("synth_family", "synth_mix")


def matmul_peak(threads: int, size: int = 2048, repeats: int = 7) -> float:
    """Best fp32 GFLOP/s of ``torch.mm`` on two ``size x size`` matrices."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - t) / 1e9)
    return best


def _fixture_tasks():
    """``{task: (folds, prediction_type, metric)}`` from the CI fixture."""
    from audiomaepp.evaluation import ProbeData

    meta = json.loads(FIXTURE.with_suffix(".json").read_text())
    arrays = np.load(FIXTURE.with_suffix(".npz"))
    out = {}
    for task in TASKS:
        info = meta["tasks"][task]
        data = [
            tuple(
                ProbeData(
                    arrays[f"{task}/{s}/x"].astype(np.float32),
                    arrays[f"{task}/{s}/y"].astype(np.float32),
                )
                for s in ("train", "valid", "test")
            )
        ]
        out[task] = (data, info["prediction_type"], info["metric"])
    return out


def run_probe(seeds: int) -> tuple[float, dict[str, list[float]]]:
    """Seconds for both tasks and the per-seed test scores (whatever ``audiomaepp`` is imported)."""
    from audiomaepp.evaluation import probe_folds

    tasks, scores = _fixture_tasks(), {}
    start = time.perf_counter()
    for task, (data, ptype, metric) in tasks.items():
        runs = probe_folds(data, ptype, [metric], list(range(seeds)))
        scores[task] = [r[0].test[metric] for r in runs]
    return time.perf_counter() - start, scores


def time_old(old_src: Path, seeds: int, threads: int) -> dict:
    """``run_probe`` with ``old_src`` first on the path, in a fresh interpreter."""
    code = (
        "import json, torch; from benchmarks.bench_probe import run_probe; "
        f"torch.set_num_threads({threads}); s, sc = run_probe({seeds}); "
        "print(json.dumps({'seconds': s, 'scores': sc}))"
    )
    env = {**os.environ, "PYTHONPATH": f"{old_src}:{ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _member_flops(n_train: int, n_valid: int, n_test: int, d: int, h: int, c: int, fit) -> float:
    """Matrix-product FLOPs one member executed: per training example and epoch the first layer
    forward and its weight gradient (2 x 2dH; no input gradient), the second layer forward, weight
    and input gradients (3 x 2HC); a validation pass every check (2(dH + HC) per clip); the test."""
    per_example = 4 * d * h + 6 * h * c
    checks = fit.epochs // 3 + (1 if fit.epochs < 3 else 0)
    evals = checks * n_valid + n_test
    return fit.epochs * n_train * per_example + evals * 2 * (d * h + h * c)


def time_new(seeds: int, threads: int) -> dict:
    """``run_probe`` of this tree, counting the executed FLOPs through ``fit_members``."""
    from audiomaepp.evaluation import probe as P

    torch.set_num_threads(threads)
    calls, fit = [], P.fit_members

    def recording(train, valid, *args, **kwargs):
        res = fit(train, valid, *args, **kwargs)
        calls.append((train.x.shape, len(valid.x), train.y.shape[1], res))
        return res

    P.fit_members = recording
    try:
        seconds, scores = run_probe(seeds)
    finally:
        P.fit_members = fit
    hidden = P.ProbeConfig().hidden_dim
    flops = 0.0
    for (n, d), nv, c, res in calls:
        flops += sum(_member_flops(n, nv, nv, d, hidden, c, r) for r in res)
    return {"seconds": seconds, "scores": scores, "flops": flops}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-src", type=Path, required=True, help="src/ of the probe to compare with")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="probe_speed")
    a = p.parse_args(argv)
    peak = matmul_peak(a.threads)
    print(f"fp32 matmul peak ({a.threads} thread(s)): {peak:.1f} GFLOP/s", flush=True)
    new = time_new(a.seeds, a.threads)
    achieved = new["flops"] / new["seconds"] / 1e9
    print(
        f"new: {new['seconds']:.1f} s, {new['flops'] / 1e12:.3f} TFLOP executed, "
        f"{achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f} % of the floor",
        flush=True,
    )
    old = time_old(a.old_src, a.seeds, a.threads)
    speedup = old["seconds"] / new["seconds"]
    print(f"old: {old['seconds']:.1f} s -> speed-up {speedup:.1f}x", flush=True)
    peak_after = matmul_peak(a.threads)
    print(f"fp32 matmul peak again at the end: {peak_after:.1f} GFLOP/s", flush=True)
    mean = {
        k: {t: float(np.mean(v)) for t, v in r["scores"].items()}
        for k, r in (("old", old), ("new", new))
    }
    write_result(
        a.out,
        {
            "cpu_model": cpu_model(),
            "threads": a.threads,
            "seeds": a.seeds,
            "device": device_info(torch.device("cpu")),
            "tasks": list(TASKS),
            "embeddings": "tests/fixtures/heareval_golden.npz (log-mel, float16-rounded)",
            "old_src": str(a.old_src),
            "load_average_at_end": os.getloadavg()[0],
            "results": {
                "matmul_peak_gflops": round(peak, 1),
                "matmul_peak_gflops_at_end": round(peak_after, 1),
                "old_s": round(old["seconds"], 2),
                "new_s": round(new["seconds"], 2),
                "speedup": round(speedup, 2),
                "new_executed_tflop": round(new["flops"] / 1e12, 4),
                "new_floor_s": round(new["flops"] / peak / 1e9, 2),
                "new_achieved_gflops": round(achieved, 1),
                "new_percent_of_floor": round(100 * achieved / peak, 1),
                "mean_test_score": mean,
            },
        },
    )


if __name__ == "__main__":
    main()
