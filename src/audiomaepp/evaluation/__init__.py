"""Downstream evaluation of frozen scene embeddings on HEAR-format tasks (spec §7).

Public API::

    from audiomaepp.evaluation import make_embedder, run_evaluation, write_report
    result = run_evaluation([make_embedder("logmel")], ["tasks/"], out_dir="eval", seeds=10,
                            cache_dir="eval/cache")
    print(result.normalized)

Modules: ``tasks`` (reader), ``embedders`` (protocol, log-mel baseline, factory), ``cache``
(embedding cache), ``probe`` (the kit's MLP probe, batched over seeds x dropouts), ``metrics``,
``stats`` (t quantile, CI, aggregate score), ``results`` (what an evaluation produces), ``runner``
(the protocol end to end), ``report`` (Markdown / CSV / JSON / PNG).
"""

from .cache import embed_split
from .embedders import ClipEmbedder, EmbedderError, LogMelStatsEmbedder, make_embedder
from .metrics import METRICS, PERCENT_METRICS, compute_metrics
from .probe import Member, ProbeConfig, ProbeData, ProbeResult, fit_members, probe_folds
from .report import markdown_table, write_report
from .results import EvaluationResult, FoldRun, TaskResult
from .runner import evaluate_task, probe_task, run_evaluation
from .stats import (
    FIDELITY_MEAN_DIFF_MAX,
    FIDELITY_P_MIN,
    mean_ci,
    normalized_scores,
    t_quantile,
    welch_p,
)
from .tasks import Fold, Task, TaskFormatError, find_task_dirs, read_task, read_tasks

__all__ = [
    "ClipEmbedder",
    "EmbedderError",
    "LogMelStatsEmbedder",
    "make_embedder",
    "embed_split",
    "Task",
    "Fold",
    "TaskFormatError",
    "read_task",
    "read_tasks",
    "find_task_dirs",
    "ProbeConfig",
    "ProbeData",
    "ProbeResult",
    "Member",
    "fit_members",
    "probe_folds",
    "METRICS",
    "PERCENT_METRICS",
    "compute_metrics",
    "mean_ci",
    "welch_p",
    "FIDELITY_P_MIN",
    "FIDELITY_MEAN_DIFF_MAX",
    "t_quantile",
    "normalized_scores",
    "FoldRun",
    "TaskResult",
    "EvaluationResult",
    "evaluate_task",
    "probe_task",
    "run_evaluation",
    "markdown_table",
    "write_report",
]
