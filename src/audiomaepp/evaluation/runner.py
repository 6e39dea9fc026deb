"""Run the downstream protocol: embed every task split once, train the probes of all seeds of a
fold as one batched model (dropout grid on the first fold, as hear-eval-kit), average folds,
summarise seeds (mean and 95 % CI) and compute the aggregate normalized score.

Score of one (model, task, seed): the primary metric on the test split, averaged over test folds
for k-fold tasks. Task score: mean over seeds; CI: ``t(0.975, n-1) * std(ddof=1) / sqrt(n)``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from .cache import embed_split
from .embedders import ClipEmbedder, EmbedderError, make_embedder
from .probe import ProbeConfig, ProbeData, probe_folds
from .report import write_report
from .results import EvaluationResult, FoldRun, TaskResult
from .stats import normalized_scores
from .tasks import Fold, Task, read_tasks

__all__ = [
    "run_evaluation",
    "evaluate_task",
    "probe_task",
]

log = logging.getLogger(__name__)


def _fold_data(task: Task, fold: Fold, emb: dict[str, np.ndarray], ys: dict[str, np.ndarray]):
    """Stack the training splits; return ``(train, valid, test)`` :class:`ProbeData`."""
    train = ProbeData(
        np.concatenate([emb[s] for s in fold.train]), np.concatenate([ys[s] for s in fold.train])
    )
    return (
        train,
        ProbeData(emb[fold.valid], ys[fold.valid]),
        ProbeData(emb[fold.test], ys[fold.test]),
    )


def _embed_task(
    embedder: ClipEmbedder, task: Task, cache_dir, progress: bool
) -> dict[str, np.ndarray]:
    emb = {
        s: embed_split(embedder, task, s, cache_dir, progress=progress) for s in task.split_names
    }
    dims = {e.shape[1] for e in emb.values()}
    if len(dims) != 1:
        raise EmbedderError(
            f"embedder {embedder.name}: different sizes {dims} across splits of {task.name}"
        )
    return emb


def evaluate_task(
    embedder: ClipEmbedder,
    task: Task,
    seeds: Sequence[int],
    cfg: ProbeConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    bar: Any = None,
) -> TaskResult:
    """Embed ``task`` with ``embedder`` and run the probe for every seed and fold.

    ``bar``: an optional tqdm bar advanced by one per probe (seed x fold).
    """
    emb = _embed_task(embedder, task, cache_dir, progress)
    return probe_task(task, emb, seeds, cfg, model=embedder.name, bar=bar)


def probe_task(
    task: Task,
    embeddings: dict[str, np.ndarray],
    seeds: Sequence[int],
    cfg: ProbeConfig | None = None,
    model: str = "",
    bar: Any = None,
) -> TaskResult:
    """Probe ready-made embeddings ``{split: (n, d)}`` (rows in :meth:`Task.files` order)."""
    cfg = cfg or ProbeConfig()
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    ys = {s: task.targets(s) for s in task.split_names}
    folds = task.folds()
    data = [_fold_data(task, f, embeddings, ys) for f in folds]
    per_seed = probe_folds(data, task.prediction_type, task.metrics, list(seeds), cfg)
    runs = [
        [
            FoldRun(fold.test, fold.valid, p.dropout, p.valid_score, p.best_epoch, p.epochs, p.test)
            for fold, p in zip(folds, row, strict=True)
        ]
        for row in per_seed
    ]
    if bar is not None:
        bar.update(len(seeds) * len(folds))
    return TaskResult(
        model,
        task.name,
        task.metrics,
        list(seeds),
        runs,
        next(iter(embeddings.values())).shape[1],
        task.prediction_type,
        task.split_mode,
    )


def _unique_names(embedders: list[ClipEmbedder]) -> list[str]:
    """Report row labels: embedder names, made unique with ``#2``, ``#3`` suffixes."""
    seen: dict[str, int] = {}
    names = []
    for e in embedders:
        seen[e.name] = seen.get(e.name, 0) + 1
        names.append(e.name if seen[e.name] == 1 else f"{e.name}#{seen[e.name]}")
    return names


def run_evaluation(
    embedders: Sequence[ClipEmbedder | str],
    task_dirs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    seeds: int | Sequence[int] = 10,
    cache_dir: str | Path | None = None,
    probe: ProbeConfig | None = None,
    progress: bool = True,
    **probe_overrides: Any,
) -> EvaluationResult:
    """Evaluate every embedder on every task; write the report to ``out_dir`` when given.

    ``embedders``: :class:`ClipEmbedder` objects or spec strings for :func:`make_embedder`.
    ``task_dirs``: task folders or folders of task folders. ``seeds``: a count (seeds 0..n-1)
    or explicit seeds. ``cache_dir``: embedding cache (None: no cache). ``probe`` /
    ``probe_overrides`` (e.g. ``max_epochs=30``): :class:`ProbeConfig` fields.
    """
    embs = [make_embedder(e) if isinstance(e, str) else e for e in embedders]
    if not embs:
        raise EmbedderError("no embedders to evaluate")
    cfg = dataclasses.replace(probe or ProbeConfig(), **probe_overrides)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("need at least one seed")
    tasks = read_tasks(task_dirs)
    names = _unique_names(embs)
    total = len(embs) * len(seed_list) * sum(len(t.folds()) for t in tasks)
    results: dict[str, dict[str, TaskResult]] = {n: {} for n in names}
    start = time.time()
    with tqdm(total=total, desc="probes", unit="probe", disable=not progress) as bar:
        for task in tasks:
            for name, emb in zip(names, embs, strict=True):
                bar.set_postfix_str(f"{name} / {task.name}")
                r = evaluate_task(emb, task, seed_list, cfg, cache_dir, progress, bar)
                r.model = name
                results[name][task.name] = r
                log.info(
                    "%s on %s: %s = %.4f ± %.4f", name, task.name, r.primary_metric, r.mean, r.ci
                )
    task_names = [t.name for t in tasks]
    table = {m: {t: results[m][t].mean for t in task_names} for m in names}
    config = {
        "seeds": seed_list,
        "probe": dataclasses.asdict(cfg),
        "audiomaepp": __version__,
        "tasks": {t.name: str(t.path) for t in tasks},
        "embedders": {n: e.cache_key for n, e in zip(names, embs, strict=True)},
        "seconds": round(time.time() - start, 1),
    }
    result = EvaluationResult(
        names, task_names, results, normalized_scores(table, task_names), config
    )
    if out_dir is not None:
        write_report(result, out_dir)
    return result
