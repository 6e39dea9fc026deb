"""Reader for HEAR-format *scene* tasks (the layout hear-preprocess writes).

A task folder holds::

    task_metadata.json      task_name, embedding_type, prediction_type, split_mode, nfolds,
                            evaluation (metric names, the first is the primary), sample_duration
    labelvocabulary.csv     header ``idx,label``; one row per class, idx 0..C-1
    <split>.json            {file name: [label, ...]} for each split
    16000/<split>/<file>    the audio at 16 kHz

Splits are ``train/valid/test`` for ``split_mode == "trainvaltest"`` and ``fold00..foldNN`` for the
two k-fold modes. For k-fold tasks, test fold ``i`` is validated on fold ``(i + 1) mod n`` and
trained on the others (hear-eval-kit's scheme); the task score is the average over test folds.
Every problem is a :class:`TaskFormatError` naming the file at fault. A task folder is untrusted
input: every file read from it (metadata, labels, splits, audio) must resolve inside it, so a
symlink pointing elsewhere is refused like a ``..`` name.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from ..errors import AudioMAEError
from .metrics import METRICS

__all__ = [
    "TaskFormatError",
    "Fold",
    "Task",
    "read_task",
    "find_task_dirs",
    "read_tasks",
    "SPLIT_MODES",
    "PREDICTION_TYPES",
    "AUDIO_SUBDIR",
]

SPLIT_MODES = ("trainvaltest", "presplit_kfold", "new_split_kfold")
PREDICTION_TYPES = ("multiclass", "multilabel")
AUDIO_SUBDIR = "16000"  # HEAR tasks ship one audio copy per sample rate; we read 16 kHz
METADATA_FILE = "task_metadata.json"
VOCAB_FILE = "labelvocabulary.csv"
_REQUIRED_KEYS = ("task_name", "embedding_type", "prediction_type", "split_mode", "evaluation")


class TaskFormatError(AudioMAEError, ValueError):
    """A HEAR task folder whose metadata, labels or audio do not fit the format."""


@dataclass(frozen=True)
class Fold:
    """Which splits train, validate and test one probe; ``test`` also names the fold."""

    train: tuple[str, ...]
    valid: str
    test: str


@dataclass
class Task:
    """One scene task: metadata, label vocabulary and ``split -> {file: labels}``."""

    path: Path
    name: str
    prediction_type: str
    split_mode: str
    nfolds: int | None
    metrics: tuple[str, ...]
    labels: tuple[str, ...]  # class names in index order
    splits: dict[str, dict[str, tuple[str, ...]]]  # split -> file (sorted) -> labels
    sample_duration: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def primary_metric(self) -> str:
        """The first entry of ``evaluation``: the score used for selection and for the table."""
        return self.metrics[0]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def split_names(self) -> list[str]:
        return list(self.splits)

    def folds(self) -> list[Fold]:
        """Train/valid/test assignments: one for ``trainvaltest``, one per fold for k-fold tasks."""
        if self.split_mode == "trainvaltest":
            return [Fold(train=("train",), valid="valid", test="test")]
        names = self.split_names
        n = len(names)
        out = []
        for i, test in enumerate(names):
            valid = names[(i + 1) % n]
            out.append(Fold(tuple(s for s in names if s not in (test, valid)), valid, test))
        return out

    def files(self, split: str) -> list[str]:
        """File names of ``split`` in a fixed (sorted) order; embeddings rows follow it."""
        return list(self.splits[split])

    def audio_path(self, split: str, file: str) -> Path:
        """``16000/<split>/<file>`` of the task; refused if it resolves outside the task folder."""
        return _confined(self.path / AUDIO_SUBDIR / split / file, self.path)

    def targets(self, split: str) -> np.ndarray:
        """Multi-hot targets ``(n, C)`` float32 (one-hot for multiclass) in :meth:`files` order."""
        index = {label: i for i, label in enumerate(self.labels)}
        rows = self.splits[split]
        y = np.zeros((len(rows), self.num_classes), dtype=np.float32)
        for r, labels in enumerate(rows.values()):
            y[r, [index[label] for label in labels]] = 1.0
        return y


def _confined(path: Path, root: Path) -> Path:
    """``path``, after checking that it resolves (symlinks and ``..`` followed) inside ``root``.

    Raises :class:`TaskFormatError` naming the file and where it leads otherwise: a task folder's
    files must not make the evaluation read (and embed or report on) files elsewhere.
    """
    real, base = path.resolve(), root.resolve()
    if not real.is_relative_to(base):
        raise TaskFormatError(
            f"{path}: resolves to {real}, outside the task folder {base} (a symlink or '..' "
            "leading out of the task is refused)"
        )
    return path


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise TaskFormatError(f"{path}: missing file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaskFormatError(f"{path}: not valid JSON ({exc})") from exc


def _check_metadata(meta: Any, path: Path) -> None:
    """Validate the fields we use; everything else in the file is kept but not interpreted."""
    if not isinstance(meta, dict):
        raise TaskFormatError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise TaskFormatError(f"{path}: missing key(s) {', '.join(missing)}")
    if meta["embedding_type"] != "scene":
        raise TaskFormatError(
            f"{path}: embedding_type {meta['embedding_type']!r}; only scene tasks are supported"
        )
    if meta["prediction_type"] not in PREDICTION_TYPES:
        raise TaskFormatError(
            f"{path}: prediction_type {meta['prediction_type']!r} is not one of {PREDICTION_TYPES}"
        )
    if meta["split_mode"] not in SPLIT_MODES:
        raise TaskFormatError(
            f"{path}: split_mode {meta['split_mode']!r} is not one of {SPLIT_MODES}"
        )
    ev = meta["evaluation"]
    if not isinstance(ev, list) or not ev or not all(isinstance(m, str) for m in ev):
        raise TaskFormatError(f"{path}: evaluation must be a non-empty list of metric names")
    unknown = [m for m in ev if m not in METRICS]
    if unknown:
        raise TaskFormatError(f"{path}: unknown metric(s) {unknown}; known: {sorted(METRICS)}")


def _split_names(meta: dict[str, Any], path: Path) -> list[str]:
    if meta["split_mode"] == "trainvaltest":
        return ["train", "valid", "test"]
    nfolds = meta.get("nfolds")
    if not isinstance(nfolds, int) or isinstance(nfolds, bool) or nfolds < 3:
        raise TaskFormatError(
            f"{path}: split_mode {meta['split_mode']!r} needs an integer nfolds >= 3 "
            f"(one test, one validation and at least one training fold), got {nfolds!r}"
        )
    return [f"fold{i:02d}" for i in range(nfolds)]


def _read_vocabulary(path: Path) -> tuple[str, ...]:
    """``labelvocabulary.csv`` -> labels ordered by ``idx`` (which must be 0..C-1)."""
    if not path.is_file():
        raise TaskFormatError(f"{path}: missing file")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"idx", "label"} <= set(reader.fieldnames):
            raise TaskFormatError(f"{path}: expected a header with columns idx,label")
        try:
            rows = [(int(r["idx"]), str(r["label"])) for r in reader]
        except (TypeError, ValueError) as exc:
            raise TaskFormatError(f"{path}: idx must be an integer ({exc})") from exc
    rows.sort()
    if not rows or [i for i, _ in rows] != list(range(len(rows))):
        raise TaskFormatError(f"{path}: idx must run 0..{len(rows) - 1} without gaps or repeats")
    labels = tuple(label for _, label in rows)
    if len(set(labels)) != len(labels):
        raise TaskFormatError(f"{path}: repeated label names")
    return labels


def _check_file_name(file: str, path: Path) -> None:
    """Split files name audio under ``16000/<split>/``: refuse names that would leave that folder.

    A split JSON is untrusted input; ``../`` parts, absolute paths, drive letters or backslashes
    would make the evaluation read (and embed) files outside the task.
    """
    parts = PurePosixPath(file).parts
    if (
        not file
        or "\\" in file
        or "\x00" in file
        or PurePosixPath(file).is_absolute()
        or PureWindowsPath(file).drive
        or ".." in parts
    ):
        raise TaskFormatError(
            f"{path}: file name {file!r} must be a relative path inside the split's audio folder "
            "(no '..', absolute paths or backslashes)"
        )


def _read_split(path: Path, vocab: set[str], prediction_type: str) -> dict[str, tuple[str, ...]]:
    """``<split>.json`` -> {file: labels} sorted by file name; labels are compared as strings."""
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise TaskFormatError(f"{path}: expected a non-empty object {{file name: [labels]}}")
    out: dict[str, tuple[str, ...]] = {}
    for file in sorted(data):
        _check_file_name(file, path)
        labels = data[file]
        if not isinstance(labels, list):
            raise TaskFormatError(f"{path}: labels of {file!r} must be a list, got {labels!r}")
        labels = tuple(dict.fromkeys(str(x) for x in labels))
        unknown = [x for x in labels if x not in vocab]
        if unknown:
            raise TaskFormatError(f"{path}: {file!r} has label(s) {unknown} not in {VOCAB_FILE}")
        if prediction_type == "multiclass" and len(labels) != 1:
            raise TaskFormatError(
                f"{path}: {file!r} has {len(labels)} labels; a multiclass task needs exactly one"
            )
        out[file] = labels
    return out


def _check_audio(task: Task) -> None:
    """Fail early (before hours of embedding) when audio files listed in the splits are missing."""
    missing = [
        task.audio_path(split, f)
        for split in task.splits
        for f in task.splits[split]
        if not task.audio_path(split, f).is_file()
    ]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise TaskFormatError(f"task {task.name}: missing audio file(s) {shown}{more}")


def read_task(task_dir: str | Path, check_audio: bool = True) -> Task:
    """Read and validate one HEAR scene task folder.

    ``check_audio`` verifies that every listed audio file exists under ``16000/<split>/``.
    """
    root = Path(task_dir)
    if not root.is_dir():
        raise TaskFormatError(f"{root}: not a task folder")
    meta_path = _confined(root / METADATA_FILE, root)
    meta = _read_json(meta_path)
    _check_metadata(meta, meta_path)
    labels = _read_vocabulary(_confined(root / VOCAB_FILE, root))
    vocab = set(labels)
    splits = {
        s: _read_split(_confined(root / f"{s}.json", root), vocab, meta["prediction_type"])
        for s in _split_names(meta, meta_path)
    }
    task = Task(
        path=root,
        name=str(meta["task_name"]),
        prediction_type=meta["prediction_type"],
        split_mode=meta["split_mode"],
        nfolds=meta.get("nfolds"),
        metrics=tuple(meta["evaluation"]),
        labels=labels,
        splits=splits,
        sample_duration=meta.get("sample_duration"),
        metadata=meta,
    )
    if check_audio:
        _check_audio(task)
    return task


def find_task_dirs(paths: list[str | Path]) -> list[Path]:
    """Each path is a task folder (has ``task_metadata.json``) or a folder of task folders."""
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        if (p / METADATA_FILE).is_file():
            found.append(p)
        elif p.is_dir():
            subs = sorted(d for d in p.iterdir() if (d / METADATA_FILE).is_file())
            if not subs:
                raise TaskFormatError(
                    f"{p}: neither a task folder nor a folder of task folders "
                    f"(no {METADATA_FILE} found)"
                )
            found += subs
        else:
            raise TaskFormatError(f"{p}: no such task folder")
    return list(dict.fromkeys(found))


def read_tasks(task_dirs: Sequence[str | Path]) -> list[Task]:
    """Every task under ``task_dirs`` (task folders or folders of them); names must be unique."""
    tasks = [read_task(d) for d in find_task_dirs(list(task_dirs))]
    names = [t.name for t in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TaskFormatError(f"task name(s) {dup} appear in more than one task folder")
    return tasks
