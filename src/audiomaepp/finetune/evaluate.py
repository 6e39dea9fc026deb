"""Fine-tuned models in the evaluation report: ``audiomaepp evaluate --mode finetune [probe]``.

Each (model, task, seed) is one :func:`~audiomaepp.finetune.finetune` job (every fold of k-fold
tasks) whose test scores fill the same :class:`~audiomaepp.evaluation.results.TaskResult` the probe
fills, so the Table-2 report (mean ± 95 % CI over seeds, normalized score) compares fine-tuned,
linear-probe-by-fine-tuning and MLP-probed models side by side. In fine-tune rows a fold's
``best_epoch`` is the optimizer step of the best validation score and ``dropout`` is NaN.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..evaluation.embedders import BASELINES
from ..evaluation.results import EvaluationResult, FoldRun, TaskResult
from ..evaluation.runner import run_evaluation
from ..evaluation.stats import normalized_scores
from ..evaluation.tasks import read_tasks
from ..model.spec import parse_model_spec
from ..training.faults import StopRequest
from .config import FinetuneConfig
from .data import load_task
from .trainer import finetune

log = logging.getLogger(__name__)

MODES = (
    "probe",
    "finetune",
    "linear",
)  # MLP probe on frozen embeddings; full fine-tuning; frozen encoder + head


class EvaluationStopped(Exception):
    """A stop signal ended ``evaluate --mode finetune`` after the running fine-tune checkpointed;
    the same command (``--resume auto`` is the default here) continues where it stopped."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def finetune_task(
    spec: str,
    name: str,
    task_dir: Path,
    seeds: Sequence[int],
    base: FinetuneConfig,
    work_dir: Path,
    linear: bool = False,
) -> TaskResult:
    """Fine-tune ``spec`` on one task once per seed; the test scores as a :class:`TaskResult`."""
    runs: list[list[FoldRun]] = []
    task = load_task(task_dir, base.prediction_type)
    width = 0
    for seed in seeds:
        cfg = base.replace(
            model=spec,
            task=str(task_dir),
            seed=seed,
            linear_probe=linear,
            out_dir=str(work_dir / _slug(name) / _slug(task.name) / f"seed{seed}"),
            resume=base.loop.resume or "auto",
        )
        with StopRequest() as stop:  # marked by the fine-tune's own request, or between seeds
            result = finetune(cfg, task)
        if not result.finished or stop.requested:
            raise EvaluationStopped(
                f"fine-tuning {name} on {task.name} (seed {seed}) stopped; "
                f"rerun the same command to resume (runs in {work_dir})"
            )
        runs.append(
            [
                FoldRun(
                    f.fold,
                    f.valid,
                    math.nan,
                    f.best_valid if f.best_valid is not None else math.nan,
                    f.best_step or 0,
                    f.best_step or 0,
                    f.test,
                )
                for f in result.folds
            ]
        )
        width = width or _embed_dim(result.model_dir)
    return TaskResult(
        name,
        task.name,
        task.metrics,
        list(seeds),
        runs,
        width,
        task.prediction_type,
        task.split_mode,
    )


def _embed_dim(model_dir: Path) -> int:
    import json

    meta = json.loads((model_dir / "config.json").read_text())
    return int(meta["config"]["encoder"]["embed_dim"])


def run_modes(
    models: Sequence[str],
    task_dirs: Sequence[str | Path],
    out_dir: str | Path,
    modes: Sequence[str] = ("finetune",),
    seeds: int | Sequence[int] = 3,
    finetune_config: FinetuneConfig | None = None,
    probe_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate ``models`` (specs) in each of ``modes`` on every task; one report in ``out_dir``.

    Rows are ``"<model> [<mode>]"`` when more than one mode is asked for. ``probe_kwargs`` go to
    :func:`~audiomaepp.evaluation.run_evaluation` (``cache_dir``, ``max_epochs``, ...), the
    fine-tuning recipe comes from ``finetune_config`` (default :class:`FinetuneConfig`).
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"--mode {list(modes)}: choose from {MODES}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    base = (finetune_config or FinetuneConfig()).replace(progress=progress)
    tasks = read_tasks(task_dirs)
    out = Path(out_dir)
    start = time.time()
    tag = (lambda n, m: f"{n} [{m}]") if len(modes) > 1 else (lambda n, m: n)
    names: list[str] = []
    results: dict[str, dict[str, TaskResult]] = {}
    for mode in modes:
        if mode == "probe":
            probed = run_evaluation(
                list(models),
                [t.path for t in tasks],
                out_dir=None,
                seeds=seed_list,
                progress=progress,
                **(probe_kwargs or {}),
            )
            for m in probed.models:
                names.append(tag(m, mode))
                results[names[-1]] = {
                    t: dataclasses.replace(r, model=names[-1]) for t, r in probed.results[m].items()
                }
            continue
        for spec in models:
            parsed = parse_model_spec(spec, baselines=BASELINES)
            if parsed.kind == "baseline":
                raise ValueError(
                    f"the {spec} baseline has no encoder to fine-tune; use it with --mode probe"
                )
            name = tag(parsed.name, mode)
            names.append(name)
            results[name] = {}
            for task in tasks:
                log.info("%s: %s on %s, seeds %s", mode, name, task.name, seed_list)
                results[name][task.name] = finetune_task(
                    spec,
                    name,
                    task.path,
                    seed_list,
                    base,
                    out / "finetune_runs",
                    linear=mode == "linear",
                )
    task_names = [t.name for t in tasks]
    table = {m: {t: results[m][t].mean for t in task_names} for m in names}
    config = {
        "seeds": seed_list,
        "modes": list(modes),
        "finetune": base.to_dict(),
        "audiomaepp": __version__,
        "tasks": {t.name: str(t.path) for t in tasks},
        "seconds": round(time.time() - start, 1),
    }
    result = EvaluationResult(
        names, task_names, results, normalized_scores(table, task_names), config
    )
    from ..evaluation.report import write_report

    write_report(result, out)
    return result
