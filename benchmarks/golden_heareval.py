"""Golden comparison: our probe protocol against the real hear-eval-kit 2021.1.3 on the same
embeddings.

Not run in CI (the kit needs old pins and a throwaway venv, see ``../shared/hear-kit/``). Three
stages, run from the repository root:

1. ``python -m benchmarks.golden_heareval prepare --work W`` makes the demo corpus (seed 0),
   pretrains the demo's model for ``--steps`` steps (default 300), embeds every task split with
   that model (fp32) and with the log-mel mean+std baseline, rounds the embeddings to float16
   precision (so the committed fixture holds exactly what both sides scored) and writes them in
   the kit's layout under ``W/kit/<embedder>/<task>/`` (``<split>.embeddings.npy`` raw float32
   memmap, ``<split>.embedding-dimensions.json``, ``<split>.target-labels.pkl``,
   ``labelvocabulary.csv``, ``task_metadata.json``).
2. ``python -m benchmarks.golden_heareval kit --work W --seeds 10`` scores each embedder with the
   kit's own prediction runner, one process per seed, through ``../shared/hear-kit/pred_wrapper.py``
   (the restricted grid, the per-run seed), as ``run_heareval.sh`` does. ``HEAREVAL_VENV`` names
   the venv.
3. ``python -m benchmarks.golden_heareval compare --work W --seeds 10`` scores the same embeddings
   with :func:`audiomaepp.evaluation.probe_task`, writes the side-by-side table with the fidelity
   criterion to ``benchmarks/results/golden_heareval.{json,md}`` and (``--fixture``) the small CI
   fixture ``tests/fixtures/heareval_golden.npz`` + ``.json`` (embeddings of three tasks, their
   folds and the kit's per-seed scores). ``--committed-kit`` takes the kit's per-seed scores from
   the committed ``golden_heareval.json`` instead of ``W/kit_runs`` (our side only: the kit takes
   hours).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[1]
HEAR_KIT = ROOT.parent / "shared" / "hear-kit"
FIXTURE = ROOT / "tests" / "fixtures" / "heareval_golden"
# one multiclass top-1 task, one multilabel mAP task, the 5-fold task
FIXTURE_TASKS = ("synth_family", "synth_mix", "synth_count")
KIT_RUN = RESULTS / "golden_heareval.json"  # the kit's per-seed scores of the committed kit run
FIXTURE_EMBEDDER = "logmel"


# ---- stage 1: embeddings -------------------------------------------------------------------------
def prepare(work: Path, steps: int) -> None:
    from audiomaepp.demo import DemoConfig, make_shards, pretrain_model
    from audiomaepp.embedding import Embedder
    from audiomaepp.evaluation import LogMelStatsEmbedder, embed_split, read_task
    from audiomaepp.synth import CorpusConfig, generate_corpus

    cfg = DemoConfig(out=str(work), device="cpu", progress=True)
    corpus = generate_corpus(work / "corpus", CorpusConfig(seed=cfg.seed), progress=True)
    shards = make_shards(corpus.pool_dir, work / "shards", True)
    run = pretrain_model(cfg, "AudioMAE++", "plusplus", shards, steps, work)
    embedders = {
        "logmel": LogMelStatsEmbedder(),
        "audiomaepp": Embedder.from_dir(run["model_dir"], device="cpu", dtype="float32"),
    }
    for name, emb in embedders.items():
        for task_dir in corpus.task_dirs.values():
            task = read_task(task_dir)
            out = work / "kit" / name / task.name
            out.mkdir(parents=True, exist_ok=True)
            meta = json.loads((task.path / "task_metadata.json").read_text())
            meta["splits"] = task.split_names  # the kit reads the split list from here
            (out / "task_metadata.json").write_text(json.dumps(meta, indent=1))
            (out / "labelvocabulary.csv").write_text(
                (task.path / "labelvocabulary.csv").read_text()
            )
            for split in task.split_names:
                x = embed_split(emb, task, split, work / "cache", progress=True)
                x = x.astype(np.float16).astype(np.float32)  # what the fixture can store exactly
                np.ascontiguousarray(x).tofile(
                    out / f"{split}.embeddings.npy"
                )  # raw: the kit memmaps it
                (out / f"{split}.embedding-dimensions.json").write_text(json.dumps(list(x.shape)))
                with open(out / f"{split}.target-labels.pkl", "wb") as fh:
                    pickle.dump([list(labels) for labels in task.splits[split].values()], fh)
                np.save(out / f"{split}.ours.npy", x)  # the same values with a header, for stage 3
    (work / "prepare.json").write_text(
        json.dumps(
            {"steps": steps, "model_dir": str(run["model_dir"]), "final_loss": run["final_loss"]},
            indent=1,
        )
    )


# ---- stage 2: the kit ----------------------------------------------------------------------------
def kit(work: Path, seeds: int, embedders: list[str]) -> None:
    venv = Path(
        os.environ.get("HEAREVAL_VENV", Path(os.environ.get("TMPDIR", "/tmp")) / "heareval-venv")
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{HEAR_KIT / 'tfstub'}:{HEAR_KIT}",
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for seed in range(seeds):
        for name in embedders:
            src = work / "kit" / name
            dst = work / "kit_runs" / name / f"seed{seed}"
            if all((dst / t.name / "test.predicted-scores.json").is_file() for t in src.iterdir()):
                continue  # a killed run resumes where it stopped
            dst.mkdir(parents=True, exist_ok=True)
            for t in sorted(src.iterdir()):
                (dst / t.name).mkdir(exist_ok=True)
                for f in t.iterdir():
                    if not f.name.endswith(".ours.npy"):
                        target = dst / t.name / f.name
                        if not target.exists():
                            target.symlink_to(f)
            start = time.time()
            with open(dst / "kit.log", "w") as log:
                subprocess.run(
                    [
                        str(venv / "bin" / "python"),
                        str(HEAR_KIT / "pred_wrapper.py"),
                        str(seed),
                        *[str(p) for p in sorted(dst.iterdir()) if p.is_dir()],
                    ],
                    cwd=dst,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=True,
                )
            print(f"kit {name} seed {seed}: {time.time() - start:.0f} s", flush=True)


def kit_scores(work: Path, name: str, committed: bool = False) -> dict[str, list[float]]:
    """Per task, the kit's test score (mean over folds) per seed, in seed order: from the kit's
    runs under ``W/kit_runs`` or (``committed``) from the committed ``golden_heareval.json``."""
    if committed:
        tasks = json.loads(KIT_RUN.read_text())["embedders"][name]["tasks"]
        return {task: cell["kit"] for task, cell in tasks.items()}
    out: dict[str, list[float]] = {}
    for seed_dir in sorted((work / "kit_runs" / name).glob("seed*"), key=lambda p: int(p.name[4:])):
        for f in sorted(seed_dir.glob("*/test.predicted-scores.json")):
            d = json.loads(f.read_text())
            score = (
                d["aggregated_scores"]["test_score_mean"]
                if "aggregated_scores" in d
                else d["test"]["test_score"]
            )
            out.setdefault(f.parent.name, []).append(float(score))
    return out


# ---- stage 3: ours, side by side -----------------------------------------------------------------
def our_scores(work: Path, name: str, seeds: int) -> tuple[dict[str, list[float]], float]:
    """Per task, our per-seed test scores; cached in ``W/ours/<name>.json`` (delete it after
    changing the probe) so that a killed comparison resumes."""
    cache = work / "ours" / f"{name}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved["seeds"] == seeds:
            return saved["scores"], saved["seconds"]
    scores, seconds = _score_ours(work, name, seeds)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(
        json.dumps(
            {
                "seeds": seeds,
                "scores": scores,
                "seconds": seconds,
                "torch_threads": __import__("torch").get_num_threads(),
            },
            indent=1,
        )
    )
    return scores, seconds


def _score_ours(work: Path, name: str, seeds: int) -> tuple[dict[str, list[float]], float]:
    from audiomaepp.evaluation import probe_task, read_task

    corpus = work / "corpus" / "tasks"
    out, start = {}, time.perf_counter()
    for task_dir in sorted((work / "kit" / name).iterdir()):
        task = read_task(corpus / task_dir.name, check_audio=False)
        emb = {s: np.load(task_dir / f"{s}.ours.npy") for s in task.split_names}
        result = probe_task(task, emb, list(range(seeds)), model=name)
        out[task.name] = result.seed_scores()
    return out, time.perf_counter() - start


def compare(
    work: Path, seeds: int, embedders: list[str], fixture: bool, committed_kit: bool
) -> None:
    from audiomaepp.evaluation import FIDELITY_MEAN_DIFF_MAX as MEAN_DIFF_MAX
    from audiomaepp.evaluation import FIDELITY_P_MIN as P_MIN
    from audiomaepp.evaluation import mean_ci, welch_p

    kit_note = (
        f"the kit's per-seed scores of the committed run ({json.loads(KIT_RUN.read_text())['utc']}"
        ", not re-run)"
        if committed_kit
        else "the kit's per-seed scores of this run"
    )
    payload = {
        "seeds": seeds,
        "prepare": json.loads((work / "prepare.json").read_text()),
        "kit_scores": kit_note,
        "criterion": {"welch_p_min": P_MIN, "mean_abs_diff_max": MEAN_DIFF_MAX},
        "embedders": {},
    }
    lines = [
        f"Our probe re-run on the same embeddings; hear-eval-kit 2021.1.3 column: {kit_note}. "
        f"Criterion: every cell Welch p >= {P_MIN}, "
        f"mean |diff| <= {100 * MEAN_DIFF_MAX:.1f} points.",
        "",
        "| embedder | task | hear-eval-kit 2021.1.3 | audiomaepp | |diff| | Welch p | "
        "within both CIs |",
        "|---|---|---:|---:|---:|---:|:---:|",
    ]
    diffs, ps = [], []
    for name in embedders:
        theirs = kit_scores(work, name, committed_kit)
        ours, seconds = our_scores(work, name, seeds)
        payload["embedders"][name] = {"ours_seconds": round(seconds, 1), "tasks": {}}
        for task in sorted(ours):
            (mk, ck), (mo, co) = mean_ci(theirs[task]), mean_ci(ours[task])
            ok = abs(mk - mo) <= ck and abs(mk - mo) <= co
            p = welch_p(theirs[task], ours[task])
            diffs.append(abs(mk - mo))
            ps.append(p)
            payload["embedders"][name]["tasks"][task] = {
                "kit": theirs[task],
                "ours": ours[task],
                "kit_mean_ci": [mk, ck],
                "ours_mean_ci": [mo, co],
                "welch_p": p,
                "within_both_cis": ok,
            }
            lines.append(
                f"| {name} | {task} | {100 * mk:.1f} ± {100 * ck:.1f} (n={len(theirs[task])}) | "
                f"{100 * mo:.1f} ± {100 * co:.1f} (n={len(ours[task])}) | "
                f"{100 * abs(mk - mo):.1f} | "
                f"{p:.2f} | {'yes' if ok else 'no'} |"
            )
    mean_diff = float(np.mean(diffs))
    passed = min(ps) >= P_MIN and mean_diff <= MEAN_DIFF_MAX
    payload |= {"min_welch_p": min(ps), "mean_abs_diff": mean_diff, "criterion_met": passed}
    lines += [
        "",
        f"Smallest Welch p {min(ps):.3f}; mean |diff| {100 * mean_diff:.2f} points over "
        f"{len(diffs)} cells: criterion {'met' if passed else 'NOT met'}.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    write_result("golden_heareval", payload)
    (RESULTS / "golden_heareval.md").write_text(table)
    if fixture:
        write_fixture(work, payload)
    if not passed:
        sys.exit(1)


def write_fixture(work: Path, payload: dict) -> None:
    """The fixture tasks' float16 embeddings (+ targets, folds) and the kit's per-seed scores,
    for the CI test."""
    from audiomaepp.evaluation import read_task

    arrays, meta = {}, {"embedder": FIXTURE_EMBEDDER, "seeds": payload["seeds"], "tasks": {}}
    for task in FIXTURE_TASKS:
        src = work / "kit" / FIXTURE_EMBEDDER / task
        task_meta = json.loads((src / "task_metadata.json").read_text())
        labels = [
            line.split(",", 1)[1]
            for line in (src / "labelvocabulary.csv").read_text().splitlines()[1:]
        ]
        for split in task_meta["splits"]:
            arrays[f"{task}/{split}/x"] = np.load(src / f"{split}.ours.npy").astype(np.float16)
            with open(src / f"{split}.target-labels.pkl", "rb") as fh:
                rows = pickle.load(fh)  # our own file, written by stage 1
            y = np.zeros((len(rows), len(labels)), dtype=np.uint8)
            for r, row in enumerate(rows):
                y[r, [labels.index(str(label)) for label in row]] = 1
            arrays[f"{task}/{split}/y"] = y
        folds = read_task(work / "corpus" / "tasks" / task, check_audio=False).folds()
        meta["tasks"][task] = {
            "prediction_type": task_meta["prediction_type"],
            "split_mode": task_meta["split_mode"],
            "folds": [{"train": f.train, "valid": f.valid, "test": f.test} for f in folds],
            "metric": task_meta["evaluation"][0],
            "splits": task_meta["splits"],
            "labels": labels,
            "kit_seed_scores": payload["embedders"][FIXTURE_EMBEDDER]["tasks"][task]["kit"],
        }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE.with_suffix(".npz"), **arrays)
    FIXTURE.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["prepare", "kit", "compare"])
    p.add_argument("--work", type=Path, default=Path("/tmp/golden_heareval"))
    p.add_argument(
        "--steps", type=int, default=300, help="pretraining steps of the demo model (prepare)"
    )
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--embedders", nargs="+", default=["logmel", "audiomaepp"])
    p.add_argument("--fixture", action="store_true", help="also write the CI fixture (compare)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads for our probe (compare)"
    )
    p.add_argument(
        "--committed-kit",
        action="store_true",
        help="compare: take the kit's per-seed scores from the committed golden_heareval.json",
    )
    a = p.parse_args(argv)
    if a.threads:
        __import__("torch").set_num_threads(a.threads)
    if a.stage == "prepare":
        prepare(a.work, a.steps)
    elif a.stage == "kit":
        kit(a.work, a.seeds, a.embedders)
    else:
        compare(a.work, a.seeds, a.embedders, a.fixture, a.committed_kit)


if __name__ == "__main__":
    main()
