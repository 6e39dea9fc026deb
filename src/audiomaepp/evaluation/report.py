"""Report files of an evaluation, in the layout of the paper's Table 2.

``write_report(result, out_dir)`` writes:

- ``results.md``: models as rows, tasks as columns, cells ``mean ± CI`` of the primary metric in
  percent with one decimal (``d_prime`` stays a raw number), last column the normalized score.
- ``summary.csv``: one row per (model, task): metric, mean, CI, seeds, normalized score.
- ``scores.csv``: every number: one row per (model, task, seed, fold, metric) with the selected
  dropout and the early-stopping epoch.
- ``results.json``: :meth:`EvaluationResult.to_dict` (config, per-seed and per-fold scores).
- ``results.png``: grouped bars per task with CI error bars, plus the overall score.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from ..fileio import json_safe
from .metrics import PERCENT_METRICS, display_scale, format_metric
from .results import EvaluationResult

__all__ = ["format_cell", "markdown_table", "write_report"]

SCORE_COLUMN = "s(m)"


def format_cell(mean: float, ci: float, metric: str) -> str:
    """``"85.3 ± 1.2"`` (percent, 1 decimal); ``d_prime`` with 3 decimals; no CI below 2 seeds."""
    text = format_metric(mean, metric)
    return text if math.isnan(ci) else f"{text} ± {format_metric(ci, metric)}"


def markdown_table(result: EvaluationResult) -> str:
    """The Table-2-style Markdown table plus a legend line naming metrics and seed count."""
    header = ["Model", *result.tasks, SCORE_COLUMN]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|",
    ]
    for m in result.models:
        cells = [
            format_cell(*result.results[m][t].summary(), result.results[m][t].primary_metric)
            for t in result.tasks
        ]
        lines.append("| " + " | ".join([m, *cells, f"{result.normalized[m]:.1f}"]) + " |")
    first = result.results[result.models[0]]
    metrics = ", ".join(f"{t}: {first[t].primary_metric}" for t in result.tasks)
    n = len(result.config.get("seeds", first[result.tasks[0]].seeds))
    unit = (
        "in percent"
        if all(first[t].primary_metric in PERCENT_METRICS for t in result.tasks)
        else "in percent except d_prime"
    )
    lines += [
        "",
        f"Cells: mean ± 95 % CI over {n} seed(s), {unit} ({metrics}). "
        f"{SCORE_COLUMN}: normalized score over the {len(result.tasks)} task(s) and "
        f"{len(result.models)} model(s) compared.",
    ]
    return "\n".join(lines) + "\n"


def _write_summary_csv(result: EvaluationResult, path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "model",
                "task",
                "metric",
                "mean",
                "ci95",
                "n_seeds",
                "embedding_dim",
                "normalized_score",
            ]
        )
        for m in result.models:
            for t in result.tasks:
                r = result.results[m][t]
                w.writerow(
                    [
                        m,
                        t,
                        r.primary_metric,
                        *r.summary(),
                        len(r.seeds),
                        r.embedding_dim,
                        result.normalized[m],
                    ]
                )


def _write_scores_csv(result: EvaluationResult, path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "model",
                "task",
                "seed",
                "fold",
                "valid_fold",
                "dropout",
                "best_epoch",
                "epochs",
                "valid_score",
                "metric",
                "value",
            ]
        )
        for m in result.models:
            for t in result.tasks:
                r = result.results[m][t]
                for seed, folds in zip(r.seeds, r.runs, strict=True):
                    for f in folds:
                        for metric, value in f.test.items():
                            w.writerow(
                                [
                                    m,
                                    t,
                                    seed,
                                    f.fold,
                                    f.valid,
                                    f.dropout,
                                    f.best_epoch,
                                    f.epochs,
                                    f.valid_score,
                                    metric,
                                    value,
                                ]
                            )


def _write_png(result: EvaluationResult, path: Path) -> None:
    """Grouped bars (tasks x models, primary metric, CI error bars) and the overall score."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_m, n_t = len(result.models), len(result.tasks)
    width_in = max(8.0, 3.5 + n_t * (0.6 + 0.3 * n_m) + 0.5 * n_m)
    fig = Figure(figsize=(width_in, 4.5))  # Agg canvas: no pyplot, no global backend switch
    FigureCanvasAgg(fig)
    ax, ax_s = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(n_t, 1), 1.2]})
    width = 0.8 / n_m
    for i, m in enumerate(result.models):
        stats = [result.results[m][t].summary() for t in result.tasks]
        k = [display_scale(result.results[m][t].primary_metric) for t in result.tasks]
        means = [s[0] * s_k for s, s_k in zip(stats, k, strict=True)]
        cis = [0.0 if math.isnan(s[1]) else s[1] * s_k for s, s_k in zip(stats, k, strict=True)]
        ax.bar(
            np.arange(n_t) + (i - (n_m - 1) / 2) * width, means, width, yerr=cis, capsize=3, label=m
        )
        ax_s.bar(i, result.normalized[m], 0.8, color=f"C{i}")
    ax.set_xticks(np.arange(n_t), result.tasks, rotation=30, ha="right")
    ax.set_ylabel("primary metric (%)")
    ax.set_title("Downstream tasks (mean ± 95 % CI)")
    ax.legend(fontsize="small")
    ax_s.set_xticks(np.arange(n_m), result.models, rotation=30, ha="right")
    ax_s.set_ylim(0, 105)
    ax_s.set_title("s(m)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.md``, ``summary.csv``, ``scores.csv``, ``results.json``, ``results.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        k: out / name
        for k, name in [
            ("md", "results.md"),
            ("summary_csv", "summary.csv"),
            ("scores_csv", "scores.csv"),
            ("json", "results.json"),
            ("png", "results.png"),
        ]
    }
    paths["md"].write_text(markdown_table(result))
    _write_summary_csv(result, paths["summary_csv"])
    _write_scores_csv(result, paths["scores_csv"])
    paths["json"].write_text(json.dumps(json_safe(result.to_dict()), indent=1, allow_nan=False))
    _write_png(result, paths["png"])
    return paths
