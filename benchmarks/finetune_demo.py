"""Fine-tuned vs frozen (linear-probe) classifiers on the generated demo tasks, for the demo's
pretrained encoder and for a random-init encoder of the same size.

Phase ``pretrain`` makes the demo corpus and shards and pretrains the demo's AudioMAE++ (the same
model, batch and lr as ``audiomaepp demo``; ``--steps`` sets the length). Phase ``finetune`` runs
``audiomaepp.finetune`` on every demo task in both modes for both encoders and writes a table.

    python -m benchmarks.finetune_demo --phase pretrain --out /tmp/ftdemo --steps 800
    python -m benchmarks.finetune_demo --phase finetune --out /tmp/ftdemo --epochs 10

k-fold tasks can be limited to some test folds (``--folds``) to keep the run short; the table says
which folds were run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .common import RESULTS, device_info


def pretrain_phase(out: Path, steps: int, seed: int) -> Path:
    from audiomaepp.demo import DemoConfig, _prepare_shards, _train_config
    from audiomaepp.synth import CorpusConfig, generate_corpus
    from audiomaepp.training import pretrain

    corpus = generate_corpus(out / "corpus", CorpusConfig(seed=seed), progress=False)
    shards = out / "shards"
    if not (shards / "manifest.json").is_file():
        _prepare_shards(corpus.pool_dir, shards, progress=False)
    cfg = _train_config(
        DemoConfig(out=str(out), seed=seed, progress=False),
        "plusplus",
        shards,
        steps,
        out / "pretrain",
    )
    cfg = cfg.replace(viz_every=0)
    result = pretrain(cfg)
    print(
        f"pretrained {result.step} steps, final loss {result.final_loss:.4f}, {result.elapsed_s:.0f} s"
    )
    return result.model_dir


def finetune_phase(
    out: Path,
    epochs: int,
    folds: list[str] | None,
    seed: int,
    batch: int,
    which: list[str],
    modes: list[str],
) -> dict:
    from audiomaepp.demo import DEMO_MODEL
    from audiomaepp.finetune import FinetuneConfig, FinetuneLoop, finetune
    from audiomaepp.synth import CorpusConfig, generate_corpus

    corpus = generate_corpus(out / "corpus", CorpusConfig(seed=seed), progress=False)
    encoders = {
        "pretrained (demo AudioMAE++)": str(out / "pretrain" / "model"),
        "random init": "random:tiny",
    }
    encoders = {k: v for k, v in encoders.items() if k.split()[0] in which}
    rows = []
    for task_name, task_dir in corpus.task_dirs.items():
        for enc_name, model in encoders.items():
            for mode, probe in (("fine-tuned", False), ("frozen encoder + head", True)):
                if ("linear" if probe else "finetune") not in modes:
                    continue
                run = (
                    out
                    / "finetune"
                    / f"e{epochs}"
                    / task_name
                    / f"{'pre' if model != 'random:tiny' else 'rand'}_{'fr' if probe else 'fi'}"
                )
                cfg = FinetuneConfig(
                    model=model,
                    model_overrides=dict(DEMO_MODEL),
                    task=str(task_dir),
                    out_dir=str(run),
                    linear_probe=probe,
                    folds=folds,
                    loop=FinetuneLoop(
                        epochs=epochs,
                        warmup_epochs=max(1.0, epochs / 10),
                        batch_size=batch,
                        num_workers=0,
                        seed=seed,
                        progress=False,
                        resume="auto",
                    ),
                )
                t0 = time.perf_counter()
                r = finetune(cfg)
                rows.append(
                    {
                        "task": task_name,
                        "encoder": enc_name,
                        "mode": mode,
                        "primary": r.task.primary_metric,
                        "score": r.mean[r.task.primary_metric],
                        "metrics": r.mean,
                        "folds": [f.fold for f in r.folds],
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
                print(json.dumps(rows[-1]))
    return {"epochs": epochs, "batch_size": batch, "seed": seed, "rows": rows}


def probe_phase(out: Path, seed: int, seeds: int) -> dict:
    """The paper's MLP probe on frozen scene embeddings of both encoders (as ``audiomaepp demo`` runs it)."""
    from audiomaepp.demo import DEMO_MODEL
    from audiomaepp.embedding import Embedder
    from audiomaepp.evaluation import run_evaluation
    from audiomaepp.synth import CorpusConfig, generate_corpus

    corpus = generate_corpus(out / "corpus", CorpusConfig(seed=seed), progress=False)
    pre = Embedder.from_dir(out / "pretrain" / "model", device="cpu")
    pre.name = "pretrained (demo AudioMAE++)"
    rand = Embedder.random_init("tiny", seed=seed, device="cpu", **DEMO_MODEL)
    rand.name = "random init"
    result = run_evaluation(
        [pre, rand],
        list(corpus.task_dirs.values()),
        out_dir=out / "probe_report",
        seeds=seeds,
        cache_dir=out / "probe_cache",
        progress=False,
        max_epochs=300,
    )
    rows = []
    for enc in result.models:
        for task in result.tasks:
            r = result.results[enc][task]
            mean, ci = r.summary()
            rows.append(
                {
                    "task": task,
                    "encoder": enc,
                    "mode": f"MLP probe ({seeds} seeds)",
                    "primary": r.primary_metric,
                    "score": mean,
                    "ci95": ci,
                    "folds": ["all"],
                }
            )
    return {"seeds": seeds, "rows": rows}


def table(doc: dict) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in doc["rows"]))
    cols = list(dict.fromkeys((r["encoder"], r["mode"]) for r in doc["rows"]))
    head = "| task (metric) | " + " | ".join(f"{e}, {m}" for e, m in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for t in tasks:
        cells = {(r["encoder"], r["mode"]): r for r in doc["rows"] if r["task"] == t}
        any_row = next(iter(cells.values()))
        folds = (
            ""
            if len(any_row["folds"]) != 1 or any_row["folds"][0] == "test"
            else f", fold {any_row['folds'][0]}"
        )
        lines.append(
            f"| {t} ({any_row['primary']}{folds}) | "
            + " | ".join(f"{100 * cells[c]['score']:.1f}" for c in cols)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", choices=["pretrain", "finetune", "probe"], required=True)
    ap.add_argument("--out", default="ftdemo_out")
    ap.add_argument("--steps", type=int, default=800, help="pretraining steps")
    ap.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--folds", nargs="*", default=None, help="test folds of k-fold tasks (default: all)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--encoders",
        nargs="+",
        default=["pretrained", "random"],
        choices=["pretrained", "random"],
        help="which encoders to fine-tune (finished runs are reused, so a later full run is cheap)",
    )
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["finetune", "linear"],
        choices=["finetune", "linear"],
        help="finetune: encoder + head; linear: frozen encoder + head, same loop",
    )
    ap.add_argument(
        "--probe-seeds", type=int, default=3, help="seeds of the MLP probe (phase probe)"
    )
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 is much faster than 2 on a machine shared with other jobs)",
    )
    args = ap.parse_args()
    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.phase == "pretrain":
        pretrain_phase(out, args.steps, args.seed)
        return
    if args.phase == "probe":
        doc = probe_phase(out, args.seed, args.probe_seeds)
    else:
        doc = finetune_phase(
            out, args.epochs, args.folds, args.seed, args.batch_size, args.encoders, args.modes
        )
    doc["device"] = {**device_info(torch.device("cpu")), "torch_threads": torch.get_num_threads()}
    doc["pretrain_steps"] = json.loads((out / "pretrain" / "result.json").read_text())["step"]
    doc["table"] = table(doc)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"finetune_demo_{args.phase}{args.tag}_cpu.json").write_text(
        json.dumps(doc, indent=1)
    )
    print(doc["table"])


if __name__ == "__main__":
    main()
