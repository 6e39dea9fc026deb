"""The quality gate of every reduced precision: the demo's pretrained AudioMAE++ embeds the demo
tasks in fp32 and in each reduced precision / backend; the relative embedding error against fp32
is measured, and each path's probe scores (hear-eval-kit protocol, 10 seeds) must lie inside the
fp32 run's 95 % CI on every task.

    # once: the demo corpus and the demo's pretrained AudioMAE++ (2 000 steps, ~20 min on 2 cores)
    python -m benchmarks.bench_precision --cache /work/emb_cache --pretrain
    # the gate (the model dir can be any encoder directory; tasks default to the demo's)
    python -m benchmarks.bench_precision --cache /work/emb_cache \\
        --model-dir /work/emb_cache/pretrain/model

Writes ``results/precision_quality.json`` and prints the table. Scores do not depend on the
machine's load; they do depend on the CPU's kernels (bf16 needs native bf16 matmul to be fast,
not to be right: oneDNN computes the same numbers either way).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .common import device_info, write_result

PATHS = ("float32", "bfloat16", "int8", "onnxruntime-float32", "onnxruntime-int8")


def make_embedder(model_dir: Path, path: str):
    from audiomaepp.embedding import Embedder

    if path.startswith("onnxruntime"):
        from audiomaepp.export.onnx import use_onnxruntime

        emb = Embedder.from_dir(model_dir, device="cpu", dtype="float32")
        use_onnxruntime(emb, path.split("-", 1)[1])
    else:
        emb = Embedder.from_dir(model_dir, device="cpu", dtype=path)
    emb.name = path
    return emb


def relative_errors(embedders: dict, task_dirs: list[Path], cache: Path) -> dict:
    """Per path and task: ``|E - E_fp32| / |E_fp32|`` over all the task's scene embeddings."""
    from audiomaepp.evaluation.cache import embed_split
    from audiomaepp.evaluation.tasks import read_task

    out: dict[str, dict[str, float]] = {}
    for task_dir in task_dirs:
        task = read_task(task_dir)
        splits = task.split_names
        ref = np.concatenate([embed_split(embedders["float32"], task, s, cache) for s in splits])
        for path, emb in embedders.items():
            got = np.concatenate([embed_split(emb, task, s, cache) for s in splits])
            out.setdefault(path, {})[task.name] = float(
                np.linalg.norm(got - ref) / np.linalg.norm(ref)
            )
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cache", required=True, help="folder for the corpus, model and embeddings")
    p.add_argument("--model-dir", default=None, help="default: <cache>/pretrain/model")
    p.add_argument("--tasks", nargs="*", default=None, help="default: the demo's tasks")
    p.add_argument("--pretrain", action="store_true", help="pretrain the demo model first")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default: demo's)")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the demo's: 2)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from audiomaepp.demo import DEMO_STEPS, DemoConfig
    from audiomaepp.embedding.precision import cpu_features
    from audiomaepp.evaluation import run_evaluation
    from audiomaepp.synth import CorpusConfig, generate_corpus

    cache = Path(args.cache)
    corpus = generate_corpus(cache / "corpus", CorpusConfig(seed=0), progress=False)
    if args.pretrain:
        from .finetune_demo import pretrain_phase

        pretrain_phase(cache, args.steps or DEMO_STEPS, seed=0)
    model_dir = Path(args.model_dir or cache / "pretrain" / "model")
    task_dirs = [Path(t) for t in args.tasks] if args.tasks else list(corpus.task_dirs.values())
    paths = ["float32", *[x for x in args.paths if x != "float32"]]
    embedders = {x: make_embedder(model_dir, x) for x in paths}
    start = time.perf_counter()
    result = run_evaluation(
        list(embedders.values()),
        task_dirs,
        seeds=args.seeds,
        cache_dir=cache / "embeddings",
        progress=False,
        max_epochs=DemoConfig().probe_max_epochs,
        device="cpu",
    )
    errors = relative_errors(embedders, task_dirs, cache / "embeddings")
    rows, ok = {}, True
    for path in paths:
        rows[path] = {"ran": embedders[path].describe(), "tasks": {}}
        for task in result.tasks:
            ref = result.results["float32"][task]
            got = result.results[path][task]
            inside = abs(got.mean - ref.mean) <= ref.ci
            ok &= inside or path == "float32"
            rows[path]["tasks"][task] = {
                "mean": got.mean,
                "ci95": got.ci,
                "seed_scores": got.seed_scores(),
                "metric": got.primary_metric,
                "fp32_mean": ref.mean,
                "fp32_ci95": ref.ci,
                "inside_fp32_ci": inside,
                "relative_embedding_error": errors[path][task],
            }
    print(f"{'path':>20} " + " ".join(f"{t:>26}" for t in result.tasks))
    for path, row in rows.items():
        cells = [
            f"{r['mean']:.3f}±{r['ci95']:.3f} e={r['relative_embedding_error']:.0e}"
            + (" ok" if r["inside_fp32_ci"] else " OUT")
            for r in row["tasks"].values()
        ]
        print(f"{path:>20} " + " ".join(f"{c:>26}" for c in cells))
    print("every reduced-precision path inside the fp32 CIs:", ok)
    payload = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "env": device_info(torch.device("cpu")) | {"cpu": cpu_features().model},
        "model_dir": str(model_dir),
        "seconds": time.perf_counter() - start,
        "all_inside_fp32_ci": ok,
        "paths": rows,
    }
    path = write_result("precision_quality", payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
