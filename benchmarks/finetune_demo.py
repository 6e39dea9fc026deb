"""Fine-tuned vs frozen vs probed classifiers of the demo's pretrained encoder and of a random-init
encoder of the same size, on every demo task and (optionally) one real recorded task.

For every task, seed and encoder it runs ``audiomaepp.finetune`` with the default recipe
(``--recipe auto``: the ``small`` recipe for these 100-240-clip training sets), the same with
``--linear-probe`` (frozen encoder + head), and the paper's MLP probe on frozen scene embeddings
(``audiomaepp.evaluation``, hear-eval-kit's protocol). It reports mean ± 95 % CI over seeds and
checks the goals of issue 16:

1. fine-tuned >= MLP probe of the same encoder on every task (mean >= probe mean - probe CI);
2. pretrained fine-tuned > random fine-tuned on at least 3 of 4 demo tasks;
3. ``--linear-probe`` within the MLP probe's CI.

Phase ``pretrain`` makes the demo's corpus and shards and pretrains the demo's AudioMAE++ (the
``audiomaepp demo`` model, batch and lr; ``--steps`` as the demo's); any model directory can be
benchmarked instead with ``--model`` (e.g. the final demo's ``demo_out/runs/AudioMAE++/model``)::

    python -m benchmarks.finetune_demo --phase pretrain --out /tmp/ftdemo --steps 2000
    python -m benchmarks.finetune_demo --model /tmp/ftdemo/pretrain/model --out /tmp/ftdemo \\
        --seeds 3 --real

``--real`` adds the recorded piano-octave task of :mod:`benchmarks.piano_task` (needs
``pip install --no-deps mypiano==0.0.1``). k-fold tasks run on ``--folds`` (default ``fold00``)
and the probe is scored on the same folds. Finished runs are reused, so an interrupted benchmark
continues where it stopped. Results: ``benchmarks/results/finetune_demo_cpu.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .common import RESULTS, device_info

PRE, RAND = "pretrained", "random init"


def pretrain_phase(out: Path, steps: int, seed: int) -> Path:
    """The demo's AudioMAE++ pretrained on the demo pool (``audiomaepp demo``'s settings)."""
    from audiomaepp.demo import DemoConfig, make_shards, train_config
    from audiomaepp.synth import CorpusConfig, generate_corpus
    from audiomaepp.training import pretrain

    corpus = generate_corpus(out / "corpus", CorpusConfig(seed=seed), progress=False)
    shards = out / "shards"
    if not (shards / "manifest.json").is_file():
        make_shards(corpus.pool_dir, shards, progress=False)
    cfg = train_config(
        DemoConfig(out=str(out), seed=seed, progress=False),
        "plusplus",
        shards,
        steps,
        out / "pretrain",
    )
    result = pretrain(dataclasses.replace(cfg, viz_every=0))
    print(f"pretrained {result.step} steps, loss {result.final_loss:.4f}, {result.elapsed_s:.0f} s")
    return result.model_dir


def random_spec(model_dir: Path) -> tuple[str, dict[str, Any]]:
    """``random:tiny`` with the pretrained model's architecture (a random encoder of its size)."""
    cfg = json.loads((model_dir / "config.json").read_text())["config"]
    keep = ("embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth")
    keep += ("decoder_num_heads", "block", "mlp_ratio", "token_layout", "swiglu_norm")
    return "random:tiny", {k: cfg[k] for k in keep if k in cfg}


def kfold(task_dir: Path) -> bool:
    meta = json.loads((task_dir / "task_metadata.json").read_text())
    return meta["split_mode"] != "trainvaltest"


def ci_summary(scores: list[float]) -> dict[str, Any]:
    from audiomaepp.evaluation.stats import mean_ci

    mean, ci = mean_ci(scores)
    return {"mean": mean, "ci95": ci, "seeds": scores}


def finetune_rows(
    tasks: dict[str, Path], encoders: dict[str, tuple[str, dict]], args, out: Path
) -> list[dict]:
    """Every (task, encoder, mode) fine-tuning cell: per-seed primary scores and wall time."""
    from audiomaepp.finetune import FinetuneConfig, finetune

    cells = [(t, e, m) for t in tasks for e in encoders for m in args.modes]
    cells = [(t, e, m) for t, e, m in cells if m == "finetune" or e == PRE or args.linear_random]
    rows = []
    for task, enc, mode in cells:
        model, overrides = encoders[enc]
        scores, seconds, recipes = [], 0.0, set()
        for seed in range(args.seeds):
            run = out / "runs" / task / f"{'pre' if enc == PRE else 'rand'}_{mode}" / f"s{seed}"
            cfg = FinetuneConfig.from_dict(  # the loop's fields given flat
                dict(
                    model=model,
                    model_overrides=overrides,
                    task=str(tasks[task]),
                    out_dir=str(run),
                    batch_size=args.batch_size,
                    linear_probe=mode == "linear",
                    num_workers=0,
                    seed=seed,
                    folds=args.folds if kfold(tasks[task]) else None,
                    progress=False,
                    resume="auto",
                    max_steps=args.max_steps,
                )
            )
            t0 = time.perf_counter()
            result = finetune(cfg)
            seconds += time.perf_counter() - t0
            if not result.finished:
                raise SystemExit("stopped: rerun the same command to continue")
            scores.append(result.mean[result.task.primary_metric])
            used = json.loads((result.folds[0].run_dir / "finetune_config.json").read_text())
            recipes.add(used["recipe"])
        rows.append(
            {
                "task": task,
                "encoder": enc,
                "mode": "fine-tuned" if mode == "finetune" else "frozen + head",
                "recipe": sorted(recipes),
                **ci_summary(scores),
                "seconds": round(seconds, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def probe_rows(tasks: dict[str, Path], model_dir: Path, args, out: Path) -> list[dict]:
    """The MLP probe (hear-eval-kit protocol) of both encoders, scored on the fine-tuned folds."""
    from audiomaepp.embedding import Embedder
    from audiomaepp.evaluation import run_evaluation

    _, overrides = random_spec(model_dir)
    pre = Embedder.from_dir(model_dir, device="cpu")
    pre.name = PRE
    rand = Embedder.random_init("tiny", seed=0, device="cpu", **overrides)
    rand.name = RAND
    t0 = time.perf_counter()
    result = run_evaluation(
        [pre, rand],
        list(tasks.values()),
        out_dir=out / "probe_report",
        seeds=args.probe_seeds,
        cache_dir=out / "probe_cache",
        progress=False,
    )
    seconds = time.perf_counter() - t0
    rows = []
    for enc in result.models:
        for task in result.tasks:
            r = result.results[enc][task]
            metric = r.primary_metric
            scores = [fold_mean(folds, metric, args.folds) for folds in r.runs]
            rows.append(
                {
                    "task": task,
                    "encoder": enc,
                    "mode": "MLP probe",
                    **ci_summary(scores),
                    "seconds": round(seconds / (len(result.models) * len(result.tasks)), 1),
                }
            )
    return rows


def fold_mean(folds: list, metric: str, keep: list[str] | None) -> float:
    """One seed's probe score over the folds the fine-tuning ran (all of a train/test task)."""
    chosen = [f for f in folds if keep is None or f.fold in keep or len(folds) == 1]
    return sum(f.test[metric] for f in chosen) / len(chosen)


def goals(rows: list[dict], demo_tasks: list[str]) -> dict[str, Any]:
    """The three goals of the issue, per task, from the table's cells."""
    cell = {(r["task"], r["encoder"], r["mode"]): r for r in rows}
    out: dict[str, Any] = {"ft_ge_probe": {}, "linear_within_probe_ci": {}, "pre_gt_rand": {}}
    for task in dict.fromkeys(r["task"] for r in rows):
        probe = cell.get((task, PRE, "MLP probe"))
        ft = cell.get((task, PRE, "fine-tuned"))
        lin = cell.get((task, PRE, "frozen + head"))
        rand = cell.get((task, RAND, "fine-tuned"))
        if probe and ft:
            out["ft_ge_probe"][task] = ft["mean"] >= probe["mean"] - probe["ci95"]
        if probe and lin:
            out["linear_within_probe_ci"][task] = abs(lin["mean"] - probe["mean"]) <= probe["ci95"]
        if ft and rand:
            out["pre_gt_rand"][task] = ft["mean"] > rand["mean"]
    wins = sum(out["pre_gt_rand"].get(t, False) for t in demo_tasks)
    out["met"] = {
        "1_ft_ge_probe_every_demo_task": all(out["ft_ge_probe"].get(t, False) for t in demo_tasks),
        "2_pre_gt_rand_on_3_of_4": wins >= 3,
        "3_linear_within_probe_ci": all(
            out["linear_within_probe_ci"].get(t, False) for t in demo_tasks
        ),
    }
    return out


def table(rows: list[dict]) -> str:
    cols = [
        (PRE, "fine-tuned"),
        (PRE, "frozen + head"),
        (PRE, "MLP probe"),
        (RAND, "fine-tuned"),
        (RAND, "frozen + head"),
        (RAND, "MLP probe"),
    ]
    cell = {(r["task"], r["encoder"], r["mode"]): r for r in rows}
    cols = [c for c in cols if any((t, *c) in cell for t in {r["task"] for r in rows})]
    head = "| task | " + " | ".join(f"{e}: {m}" for e, m in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for task in dict.fromkeys(r["task"] for r in rows):
        lines.append(f"| {task} | " + " | ".join(_cell(cell.get((task, *c))) for c in cols) + " |")
    return "\n".join(lines)


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    ci = "" if math.isnan(r["ci95"]) else f" ± {100 * r['ci95']:.1f}"
    return f"{100 * r['mean']:.1f}{ci}"


def run_phase(args) -> dict:
    from audiomaepp.synth import CorpusConfig, generate_corpus

    out = Path(args.out)
    start = time.perf_counter()
    corpus = generate_corpus(out / "corpus", CorpusConfig(seed=0), progress=False)
    tasks = {k: Path(v) for k, v in corpus.task_dirs.items() if not args.tasks or k in args.tasks}
    demo_tasks = list(tasks)
    if args.real:
        from .piano_task import build

        tasks["piano_octave"] = build(out / "real")
    model_dir = Path(args.model)
    encoders = {PRE: (str(model_dir), {}), RAND: random_spec(model_dir)}
    if args.encoders:
        encoders = {k: v for k, v in encoders.items() if k.split()[0] in args.encoders}
    rows = probe_rows(tasks, model_dir, args, out) if not args.skip_probe else []
    rows += finetune_rows(tasks, encoders, args, out)
    return {
        "model": str(model_dir),
        "model_config": json.loads((model_dir / "config.json").read_text())["config"],
        "seeds": args.seeds,
        "probe_seeds": args.probe_seeds,
        "batch_size": args.batch_size,
        "folds": args.folds,
        "rows": rows,
        "goals": goals(rows, demo_tasks),
        "table": table(rows),
        "wall_s": round(time.perf_counter() - start, 1),
        "device": {**device_info(torch.device("cpu")), "torch_threads": torch.get_num_threads()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", choices=["pretrain", "run"], default="run")
    ap.add_argument("--out", default="ftdemo_out", help="corpus, runs and caches (reused)")
    ap.add_argument("--model", help="pretrained model directory (default OUT/pretrain/model)")
    ap.add_argument("--steps", type=int, default=2000, help="pretraining steps (the demo's)")
    ap.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per cell")
    ap.add_argument("--probe-seeds", type=int, default=10, help="MLP probe seeds (the paper's)")
    ap.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch (the demo's)")
    ap.add_argument("--folds", nargs="*", default=["fold00"], help="test folds of k-fold tasks")
    ap.add_argument("--tasks", nargs="*", default=None, help="demo tasks (default all)")
    ap.add_argument("--real", action="store_true", help="add the recorded piano task")
    ap.add_argument("--encoders", nargs="*", choices=["pretrained", "random"], default=None)
    ap.add_argument(
        "--modes", nargs="+", choices=["finetune", "linear"], default=["finetune", "linear"]
    )
    ap.add_argument("--linear-random", action="store_true", help="also freeze the random encoder")
    ap.add_argument("--skip-probe", action="store_true", help="fine-tuning cells only")
    ap.add_argument("--max-steps", type=int, default=None, help="smoke tests only: short runs")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: shared CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.phase == "pretrain":
        pretrain_phase(out, args.steps, 0)
        return
    args.model = args.model or str(out / "pretrain" / "model")
    args.folds = args.folds or None
    doc = run_phase(args)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"finetune_demo{args.tag}_cpu.json"
    path.write_text(json.dumps(doc, indent=1))
    print(doc["table"])
    print(json.dumps(doc["goals"]["met"]))
    print(f"{path} ({doc['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
