"""Probe speed: the demo's evaluation before this change (one probe at a time) vs the batched probes.

Scores ready-made embeddings of the demo's four tasks (``golden_heareval prepare`` writes them) with

- ``before``: the probe of commit 9ab86fa, loaded from git history (one model per seed, dropout
  and fold; the grid on every fold; the old demo's 300-epoch cap), at the old demo's 3 seeds;
- ``batched``: ``probe_task`` (all seeds x dropouts of a fold as one model), at 3 and 10 seeds.

    python -m benchmarks.bench_probe --work /tmp/golden_heareval --threads 2

Prints seconds per embedder and the speed-up, and writes ``benchmarks/results/probe_speed.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import device_info, write_result

BEFORE = "9ab86fa"  # the last commit with the one-at-a-time probe


def _old_probe_module():
    """``audiomaepp.evaluation.probe`` as it was at ``BEFORE`` (it only needs ``.metrics``)."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(
        ["git", "-C", str(root), "show", f"{BEFORE}:src/audiomaepp/evaluation/probe.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    src = src.replace(
        "from .metrics import compute_metrics",
        "from audiomaepp.evaluation.metrics import compute_metrics",
    )
    path = Path(tempfile.mkdtemp()) / "old_probe.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_probe", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_probe"] = mod
    spec.loader.exec_module(mod)
    return mod


def _tasks(work: Path, name: str, only: list[str] | None = None):
    from audiomaepp.evaluation import read_task

    for task_dir in sorted((work / "kit" / name).iterdir()):
        if only and task_dir.name not in only:
            continue
        task = read_task(work / "corpus" / "tasks" / task_dir.name, check_audio=False)
        yield task, {s: np.load(task_dir / f"{s}.ours.npy") for s in task.split_names}


def time_before(work: Path, name: str, seeds: int, only: list[str] | None) -> float:
    old = _old_probe_module()
    cfg = old.ProbeConfig(max_epochs=300)  # the old demo's cap
    start = time.perf_counter()
    for task, emb in _tasks(work, name, only):
        for fold in task.folds():
            tr = old.ProbeData(
                np.concatenate([emb[s] for s in fold.train]),
                np.concatenate([task.targets(s) for s in fold.train]),
            )
            va = old.ProbeData(emb[fold.valid], task.targets(fold.valid))
            te = old.ProbeData(emb[fold.test], task.targets(fold.test))
            for seed in range(seeds):
                old.train_probe(tr, va, te, task.prediction_type, task.metrics, seed, cfg)
    return time.perf_counter() - start


def time_batched(work: Path, name: str, seeds: int, only: list[str] | None) -> float:
    from audiomaepp.evaluation import probe_task

    start = time.perf_counter()
    for task, emb in _tasks(work, name, only):
        probe_task(task, emb, list(range(seeds)))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/golden_heareval"))
    p.add_argument("--embedders", nargs="+", default=["logmel", "audiomaepp"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--tasks", nargs="+", default=None, help="a subset of the demo's tasks (default: all four)"
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = {}
    for name in a.embedders:
        before3 = time_before(a.work, name, 3, a.tasks)
        new3, new10 = (
            time_batched(a.work, name, 3, a.tasks),
            time_batched(a.work, name, 10, a.tasks),
        )
        rows[name] = {
            "before_3_seeds_s": round(before3, 2),
            "batched_3_seeds_s": round(new3, 2),
            "batched_10_seeds_s": round(new10, 2),
            "speedup_3_seeds": round(before3 / new3, 1),
            "speedup_10_vs_before_3": round(before3 / new10, 1),
        }
        print(
            f"{name}: before {before3:.1f} s (3 seeds) | batched {new3:.1f} s (3 seeds), {new10:.1f} s "
            f"(10 seeds) | speed-up {before3 / new3:.1f}x at 3 seeds",
            flush=True,
        )
    write_result(
        "probe_speed",
        {
            "threads": a.threads,
            "device": device_info(torch.device("cpu")),
            "tasks": a.tasks or "all four demo tasks (300 clips each)",
            "embeddings": "golden_heareval prepare (float16-rounded)",
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
