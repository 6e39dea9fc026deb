"""Corpus generation: an unlabelled pretraining pool plus labelled HEAR-format scene tasks.

Layout written under ``out_dir``::

    pool/pool_00000.wav ...                     unlabelled 4-s mixtures of all families
    tasks/<task>/task_metadata.json             HEAR 2021 task description
    tasks/<task>/labelvocabulary.csv            idx,label
    tasks/<task>/<split>.json                   {"<split>_00000.wav": ["label", ...], ...}
    tasks/<task>/16000/<split>/<split>_00000.wav
    meta/<task>.json, meta/pool.json            every clip's generating parameters (ClipPlan)
    corpus.json                                 config, counts, tasks, per-split ids (written last)

Split rule (why a probe cannot win by memorising): every clip of the pool and of each task split
is a *role* (``"pool"``, ``"synth_pitch/train"``, ``"synth_count/fold03"``, ...) with its own id
block ``[r * ID_STRIDE, (r + 1) * ID_STRIDE)``. Timbre ids (which fix an instrument-like source)
and background ids (which fix the exact background noise) are only drawn from the clip's own
role block, so no timbre or background recording of a train split ever appears in valid/test
(or in another fold, or in the pool). Within a split a timbre is reused by about
``clips_per_timbre`` clips. The ids actually used are listed per split in ``corpus.json`` and in
:attr:`CorpusInfo.timbre_ids` / :attr:`CorpusInfo.background_ids`.

Determinism: each clip's generator is seeded from ``(seed, role, index)`` and each timbre's from
``(seed, family, timbre_id)``, so neither generation order nor ``workers`` changes a single byte.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf

from ..fileio import atomic_write_json
from .clips import clip_rng, render_clip
from .dsp import SAMPLE_RATE
from .tasks import TASKS, ClipSlot, Planner, TaskSpec, plan_pool

SYNTH_VERSION = "1"  # bump whenever generated audio changes: it invalidates cached corpora
ID_STRIDE = 1_000_000  # id block per role; far above any clip or timbre count per split
ROLES: tuple[str, ...] = ("pool",) + tuple(f"{t.name}/{s}" for t in TASKS for s in t.splits)
MARKER = ".synth_incomplete"  # present while generating: a crash leaves the folder marked stale


@dataclass(frozen=True)
class CorpusConfig:
    """What to generate. Equal configs (and :data:`SYNTH_VERSION`) give byte-identical corpora."""

    seed: int = 0  # one fixed seed makes the out-of-the-box demo reproducible
    clip_seconds: float = 2.0  # task clips match the model's 2-s input window (HEAR scene clips)
    pool_clip_seconds: float = 4.0  # pool clips are longer than 2 s so random 2-s crops differ
    n_pool: int = 600  # 40 min of pretraining audio: enough variety for a CPU demo, ~10 s to make
    n_per_task: int = 300  # a linear/MLP probe beats chance clearly; embedding stays quick on CPU
    clips_per_timbre: int = 3  # each timbre recurs a few times within a split, never across
    sample_rate: int = SAMPLE_RATE  # fixed: the model's front end only accepts 16 kHz

    def __post_init__(self) -> None:
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"sample_rate must be {SAMPLE_RATE}, got {self.sample_rate}")
        if self.seed < 0 or self.n_pool < 0 or self.clips_per_timbre < 1:
            raise ValueError("seed and n_pool must be >= 0 and clips_per_timbre >= 1")
        if self.n_per_task < 10:
            raise ValueError("n_per_task must be >= 10 (every split and fold needs clips)")
        if self.clip_seconds < 1.0 or self.pool_clip_seconds < 1.0:
            raise ValueError("clip_seconds and pool_clip_seconds must be >= 1.0")

    @classmethod
    def small(cls, seed: int = 0, n_per_task: int = 60, n_pool: int = 6) -> CorpusConfig:
        """A tiny corpus for tests (about 250 clips, a couple of seconds to generate)."""
        return cls(seed=seed, n_pool=n_pool, n_per_task=n_per_task)


@dataclass(frozen=True)
class CorpusInfo:
    """Where a generated corpus lives and what it holds.

    ``counts`` maps ``"pool"`` and each task name to its number of clips. ``timbre_ids`` and
    ``background_ids`` map task name (or ``"pool"``) -> split -> sorted ids used there; the split
    rule guarantees these sets are disjoint between splits.
    """

    root: Path
    pool_dir: Path
    task_dirs: dict[str, Path]
    counts: dict[str, int]
    timbre_ids: dict[str, dict[str, list[int]]]
    background_ids: dict[str, dict[str, list[int]]]
    config: CorpusConfig
    generated: bool  # False when an existing complete corpus was reused


@dataclass(frozen=True)
class ClipJob:
    """One clip to make: its role and index (which seed it), planner, output path and length."""

    role: str
    index: int
    planner: Planner
    slot: ClipSlot
    path: Path
    n_samples: int


def role_ids(role: str, count: int) -> range:
    """The first ``count`` ids of ``role``'s private id block."""
    if count > ID_STRIDE:
        raise ValueError(f"{count} ids do not fit in one id block of {ID_STRIDE}")
    base = ROLES.index(role) * ID_STRIDE
    return range(base, base + count)


def split_jobs(
    role: str, planner: Planner, folder: Path, prefix: str, n: int, clip_s: float, per_timbre: int
) -> list[ClipJob]:
    """Jobs for the ``n`` clips of one role, all drawing timbres from that role's id block."""
    timbres = role_ids(role, max(1, math.ceil(n / per_timbre)))
    backgrounds = role_ids(role, n)
    n_samples = int(round(clip_s * SAMPLE_RATE))
    return [
        ClipJob(
            role,
            j,
            planner,
            ClipSlot(j, timbres, backgrounds[j], clip_s),
            folder / f"{prefix}_{j:05d}.wav",
            n_samples,
        )
        for j in range(n)
    ]


def corpus_jobs(root: Path, config: CorpusConfig) -> list[ClipJob]:
    """Every clip of the corpus: the pool first, then each task split in HEAR order."""
    per = config.clips_per_timbre
    jobs = split_jobs(
        "pool", plan_pool, root / "pool", "pool", config.n_pool, config.pool_clip_seconds, per
    )
    for task in TASKS:
        for split, n in task.split_sizes(config.n_per_task).items():
            folder = root / "tasks" / task.name / str(SAMPLE_RATE) / split
            jobs += split_jobs(
                f"{task.name}/{split}", task.planner, folder, split, n, config.clip_seconds, per
            )
    return jobs


def make_clip(job: ClipJob, seed: int) -> dict:
    """Plan, render and write one clip (16-bit PCM wav); returns its plan as JSON-ready dict."""
    rng = clip_rng(seed, job.role, job.index)
    plan = job.planner(rng, job.slot)
    audio = render_clip(plan, job.n_samples, seed, rng)
    write_wav(job.path, audio)
    return plan.to_json()


def write_wav(path: Path, audio: np.ndarray) -> None:
    """Write ``audio`` ``(n,)`` as a 16-bit PCM wav at 16 kHz.

    Encoded in memory first: ``sf.write`` to a path fsyncs every file on close, which made
    writing slower than synthesising.
    """
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    path.write_bytes(buf.getvalue())


def run_jobs(jobs: list[ClipJob], seed: int, progress: bool, workers: int) -> list[dict]:
    """Make every clip (in-process, or over ``workers`` processes) and return plans in job order."""
    from tqdm import tqdm

    for folder in sorted({job.path.parent for job in jobs}):
        folder.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(jobs), desc="synth corpus", unit="clip", disable=not progress)
    with bar:
        if workers <= 1:
            return [_tick(make_clip(job, seed), bar) for job in jobs]
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(partial(make_clip, seed=seed), jobs, chunksize=8)
            return [_tick(plan, bar) for plan in results]


def _tick(plan: dict, bar) -> dict:
    bar.update(1)
    return plan


def group_plans(jobs: list[ClipJob], plans: list[dict]) -> dict[str, dict[str, dict[str, dict]]]:
    """Plans grouped as ``{task or "pool": {split: {file name: plan}}}``."""
    grouped: dict[str, dict[str, dict[str, dict]]] = {}
    for role in ROLES:  # every split present, even an empty pool
        task, _, split = role.partition("/")
        grouped.setdefault(task, {})[split or "pool"] = {}
    for job, plan in zip(jobs, plans, strict=True):
        task, _, split = job.role.partition("/")
        grouped.setdefault(task, {}).setdefault(split or "pool", {})[job.path.name] = plan
    return grouped


def write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as indented JSON atomically (temp file + rename): readers never see half."""
    atomic_write_json(path, obj)


def write_task_files(task: TaskSpec, task_dir: Path, config: CorpusConfig, splits: dict) -> None:
    """HEAR metadata, label vocabulary and one ``<split>.json`` per split for ``task``."""
    meta = {
        "task_name": task.name,
        "version": f"synth-v{SYNTH_VERSION}",
        "embedding_type": "scene",
        "prediction_type": task.prediction_type,
        "split_mode": task.split_mode,
        "sample_duration": config.clip_seconds,
        "evaluation": [task.metric],
        "download_name": f"{task.name}-v{SYNTH_VERSION}-full",
        "default_mode": "full",
        "modes": ["full"],
        "sample_rate": SAMPLE_RATE,
    }
    if task.split_mode != "trainvaltest":
        meta["nfolds"] = len(task.splits)
    write_json(task_dir / "task_metadata.json", meta)
    rows = "".join(f"{i},{label}\n" for i, label in enumerate(task.labels))
    (task_dir / "labelvocabulary.csv").write_text("idx,label\n" + rows)
    for split in task.splits:
        labels = {name: plan["labels"] for name, plan in splits[split].items()}
        write_json(task_dir / f"{split}.json", labels)


def used_ids(splits: dict[str, dict[str, dict]]) -> tuple[dict, dict]:
    """Sorted timbre ids and background ids actually used, per split."""
    timbres = {
        s: sorted({e["timbre_id"] for p in c.values() for e in p["events"]})
        for s, c in splits.items()
    }
    backgrounds = {s: sorted({p["background_id"] for p in c.values()}) for s, c in splits.items()}
    return timbres, backgrounds


SPLIT_RULE = (
    "timbre ids and background ids come from a private id block per role (pool, task/split), "
    "so none is shared between pool, train, valid, test or folds"
)


def build_manifest(config: CorpusConfig, grouped: dict) -> dict:
    """The ``corpus.json`` content: config, counts, tasks and per-split ids."""
    ids = {name: used_ids(splits) for name, splits in grouped.items()}
    return {
        "generator": "audiomaepp.synth",
        "version": SYNTH_VERSION,
        "config": asdict(config),
        "split_rule": SPLIT_RULE,
        "counts": {name: sum(map(len, splits.values())) for name, splits in grouped.items()},
        "pool_dir": "pool",
        "tasks": {
            t.name: {
                "dir": f"tasks/{t.name}",
                "prediction_type": t.prediction_type,
                "split_mode": t.split_mode,
                "metric": t.metric,
                "labels": list(t.labels),
                "splits": {s: len(c) for s, c in grouped[t.name].items()},
            }
            for t in TASKS
        },
        "timbre_ids": {name: pair[0] for name, pair in ids.items()},
        "background_ids": {name: pair[1] for name, pair in ids.items()},
    }


def info_from_manifest(root: Path, manifest: dict, generated: bool) -> CorpusInfo:
    """A :class:`CorpusInfo` from a ``corpus.json`` dict (fresh or cached alike)."""
    return CorpusInfo(
        root=root,
        pool_dir=root / manifest["pool_dir"],
        task_dirs={name: root / t["dir"] for name, t in manifest["tasks"].items()},
        counts=dict(manifest["counts"]),
        timbre_ids=manifest["timbre_ids"],
        background_ids=manifest["background_ids"],
        config=CorpusConfig(**manifest["config"]),
        generated=generated,
    )


def _wav_count(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.wav")) if folder.is_dir() else 0


def load_corpus(out_dir: str | Path, config: CorpusConfig | None = None) -> CorpusInfo | None:
    """The corpus already in ``out_dir`` if it is complete (and made with ``config``), else None.

    Complete means: ``corpus.json`` written, no in-progress marker, same generator version, and
    the expected number of wav files in the pool and every task split.
    """
    root = Path(out_dir)
    path = root / "corpus.json"
    if not path.is_file() or (root / MARKER).exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("version") != SYNTH_VERSION:
        return None
    if config is not None and manifest.get("config") != asdict(config):
        return None
    info = info_from_manifest(root, manifest, generated=False)
    if _wav_count(info.pool_dir) != info.counts.get("pool"):
        return None
    for name, task in manifest["tasks"].items():
        for split, n in task["splits"].items():
            if _wav_count(info.task_dirs[name] / str(SAMPLE_RATE) / split) != n:
                return None
    return info


def prepare_dir(root: Path) -> None:
    """Clear a stale synth corpus in ``root`` (only our own sub-folders) and mark it in progress.

    Refuses (``FileExistsError``) a non-empty folder that is not a synth corpus, so a mistyped
    path never loses someone's data.
    """
    if root.exists() and any(root.iterdir()):
        if not ((root / "corpus.json").exists() or (root / MARKER).exists()):
            raise FileExistsError(
                f"{root} is not empty and holds no synth corpus; refusing to write"
            )
        (root / "corpus.json").unlink(missing_ok=True)
        for sub in ["pool", "meta", *(f"tasks/{t.name}" for t in TASKS)]:
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("synth corpus generation in progress\n")


def generate_corpus(
    out_dir: str | Path,
    config: CorpusConfig | None = None,
    *,
    progress: bool = False,
    workers: int = 1,
) -> CorpusInfo:
    """Write the pool and the HEAR tasks under ``out_dir`` (see module docstring) and describe them.

    Reuses an existing complete corpus made with the same config instead of regenerating.
    ``workers > 1`` spreads clips over processes; the output is identical either way.
    ``progress`` shows a tqdm bar on stderr.
    """
    config = config or CorpusConfig()
    root = Path(out_dir)
    cached = load_corpus(root, config)
    if cached is not None:
        return cached
    prepare_dir(root)
    (root / "pool").mkdir(exist_ok=True)
    jobs = corpus_jobs(root, config)
    grouped = group_plans(jobs, run_jobs(jobs, config.seed, progress, workers))
    (root / "meta").mkdir(exist_ok=True)
    for name, splits in grouped.items():
        write_json(root / "meta" / f"{name}.json", splits)
    for task in TASKS:
        write_task_files(task, root / "tasks" / task.name, config, grouped[task.name])
    manifest = build_manifest(config, grouped)
    write_json(root / "corpus.json", manifest)
    (root / MARKER).unlink()
    return info_from_manifest(root, manifest, generated=True)
