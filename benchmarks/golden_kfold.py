"""The k-fold suspect of the golden comparison: our AudioMAE++ ``synth_count`` (5-fold) scores with
many seeds, with two choices of random stream per fold, against the kit's 10 committed seeds.

- ``independent``: every later fold draws its own initial weights and dropout masks
  (``Member.fold``; the kit's one running stream also gives each fold other draws);
- ``restart``: every fold restarts the seed's streams (the probe before this change).

Needs ``W`` from ``golden_heareval prepare`` (the embeddings the kit scored, see
docs/EVALUATION.md). One variant per process, as run for the committed result:

    python -m benchmarks.golden_kfold independent --work W --seeds 40 --threads 1
    python -m benchmarks.golden_kfold restart --work W --seeds 40 --threads 1

Each writes ``benchmarks/results/golden_kfold_<variant>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, write_result


def main(argv: list[str] | None = None) -> None:
    from audiomaepp.evaluation import ProbeConfig, mean_ci, probe_task, read_task, welch_p

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variant", choices=["independent", "restart"])
    p.add_argument("--work", type=Path, default=Path("/tmp/golden_heareval"))
    p.add_argument("--seeds", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    task = read_task(a.work / "corpus" / "tasks" / "synth_count", check_audio=False)
    emb_dir = a.work / "kit" / "audiomaepp" / "synth_count"
    emb = {s: np.load(emb_dir / f"{s}.ours.npy") for s in task.split_names}
    res = probe_task(task, emb, list(range(a.seeds)), ProbeConfig(fold_streams=a.variant))
    ours = res.seed_scores()
    kit_run = json.loads((RESULTS / "golden_heareval.json").read_text())
    kit = kit_run["embedders"]["audiomaepp"]["tasks"]["synth_count"]["kit"]
    (m, c), (mk, ck) = mean_ci(ours), mean_ci(kit)
    folds = [float(np.mean([r[f].test["top1_acc"] for r in res.runs])) for f in range(5)]
    payload = {
        "variant": a.variant,
        "seeds": a.seeds,
        "threads": a.threads,
        "ours": ours,
        "ours_mean_ci": [m, c],
        "ours_std": float(np.std(ours, ddof=1)),
        "kit_mean_ci": [mk, ck],
        "kit_std": float(np.std(kit, ddof=1)),
        "welch_p_vs_kit": welch_p(kit, ours),
        "ours_per_test_fold": folds,
    }
    write_result(f"golden_kfold_{a.variant}", payload)
    print(
        f"{a.variant}, {a.seeds} seeds: ours {100 * m:.1f} ± {100 * c:.1f} vs the kit's "
        f"{100 * mk:.1f} ± {100 * ck:.1f}, Welch p {payload['welch_p_vs_kit']:.3f}; per test fold "
        + ", ".join(f"{100 * f:.1f}" for f in folds)
    )


if __name__ == "__main__":
    main()
