"""``RUN/report.md``, ``RUN/report.json`` and ``RUN/per_class.png`` of a fine-tuning job.

The report gives every metric on the test split per fold and the mean over folds (k-fold tasks
are scored as HEAR scores them), per-class AP, and for multiclass tasks the confusion matrix
summed over folds. The PNG shows per-class AP and, for multiclass tasks, the confusion matrix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.metrics import display_scale, format_metric
from ..fileio import atomic_write_bytes, json_safe
from .results import FinetuneResult

REPORT_MD, REPORT_JSON, REPORT_PNG = "report.md", "report.json", "per_class.png"


def report_dict(result: FinetuneResult) -> dict[str, Any]:
    """Everything of the report as JSON-ready data."""
    task, cfg = result.task, result.config
    ap = np.array([f.per_class_ap for f in result.folds], dtype=np.float64)
    with np.errstate(all="ignore"):
        mean_ap = [float(np.nanmean(col)) if not np.isnan(col).all() else math.nan for col in ap.T]
    doc = {
        "task": task.name,
        "source": str(task.source),
        "prediction_type": task.prediction_type,
        "model": cfg.model,
        "mode": "linear_probe" if cfg.linear_probe else "finetune",
        "primary_metric": task.primary_metric,
        "labels": list(task.labels),
        "mean": result.mean,
        "per_class_ap": dict(zip(task.labels, mean_ap, strict=True)),
        "folds": [f.to_dict() for f in result.folds],
        "config": cfg.to_dict(),
    }
    if task.prediction_type == "multiclass":
        doc["confusion"] = np.sum([f.confusion for f in result.folds], axis=0).tolist()
    return json_safe(doc)


def markdown(doc: dict[str, Any]) -> str:
    metrics = list(doc["mean"])
    lines = [
        f"# Fine-tuning report: {doc['task']}",
        "",
        f"Model `{doc['model']}`, mode **{doc['mode']}**, {doc['prediction_type']}, "
        f"{len(doc['folds'])} test fold(s); primary metric **{doc['primary_metric']}** "
        "(percent except d_prime).",
        "",
        "| fold | best step | valid | " + " | ".join(metrics) + " | test clips |",
        "|---|---:|---:|" + "---:|" * len(metrics) + "---:|",
    ]
    for f in doc["folds"]:
        cells = [format_metric(f["test"].get(m), m) for m in metrics]
        lines.append(
            f"| {f['fold']} | {f['best_step']} | "
            f"{format_metric(f['best_valid'], doc['primary_metric'])} | "
            + " | ".join(cells)
            + f" | {f['n_test']} |"
        )
    lines.append(
        "| **mean** | | | " + " | ".join(format_metric(doc["mean"][m], m) for m in metrics) + " | |"
    )
    lines += ["", "Per-class AP (mean over folds):", "", "| class | AP |", "|---|---:|"]
    lines += [f"| {k} | {format_metric(v, 'mAP')} |" for k, v in doc["per_class_ap"].items()]
    failed = {p: m for f in doc["folds"] for p, m in f["failed"].items()}
    if failed:
        lines += ["", f"{len(failed)} file(s) could not be read and were left out:", ""]
        lines += [f"- {m}" for m in failed.values()]
    return "\n".join(lines) + "\n"


def write_png(doc: dict[str, Any], path: Path) -> None:
    """Per-class AP bars, and the confusion matrix for multiclass tasks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = doc["labels"]
    conf = doc.get("confusion")
    n = len(labels)
    fig = Figure(figsize=(6 + (5 if conf else 0) + 0.15 * n, 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if conf else 1, squeeze=False)[0]
    ap = [0.0 if v is None else display_scale("mAP") * v for v in doc["per_class_ap"].values()]
    axes[0].bar(np.arange(n), ap, color="C0")
    axes[0].set_xticks(np.arange(n), labels, rotation=60, ha="right", fontsize="small")
    axes[0].set_ylim(0, 100)
    axes[0].set_ylabel("AP (%)")
    axes[0].set_title(f"{doc['task']}: per-class AP (test)")
    if conf:
        m = np.array(conf, dtype=np.float64)
        rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        im = axes[1].imshow(rows, cmap="Blues", vmin=0, vmax=1)
        axes[1].set_xticks(np.arange(n), labels, rotation=60, ha="right", fontsize="small")
        axes[1].set_yticks(np.arange(n), labels, fontsize="small")
        axes[1].set_xlabel("predicted")
        axes[1].set_ylabel("true")
        axes[1].set_title("confusion (row-normalised)")
        fig.colorbar(im, ax=axes[1])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(result: FinetuneResult) -> dict[str, Path]:
    """Write the three report files into ``result.out_dir``; returns their paths."""
    out = Path(result.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = report_dict(result)
    paths = {"md": out / REPORT_MD, "json": out / REPORT_JSON, "png": out / REPORT_PNG}
    atomic_write_bytes(paths["md"], markdown(doc).encode())
    atomic_write_bytes(paths["json"], json.dumps(doc, indent=1).encode())
    write_png(doc, paths["png"])
    return paths
