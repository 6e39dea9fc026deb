"""Labelled clips for fine-tuning: HEAR task folders or CSV manifests, crops for training, chunks
for evaluation.

One clip, start to end: decode (:func:`audiomaepp.audio.load_audio`: any format, mono, 16 kHz) ->
log-mel ``(T, 80)`` -> standardised over the whole clip (as the embedding path does) ->

* training: a random 200-frame window (a clip shorter than 2 s is zero-padded after
  standardisation, as the embedding path pads), SpecAugment and mixup (:mod:`.augment`);
* evaluation / prediction: every 200-frame window at 0, 200, 400, ... frames; a last partial
  window holding at least 1 s of audio is taken as the clip's final 200 frames instead (it then
  overlaps the window before it), a shorter tail is dropped. Unlike the embedding path's chunks,
  no window is mostly zero padding: a chunk of silence would otherwise weigh as much as a chunk of
  audio in the clip-level average of chunk predictions.
"""

from __future__ import annotations

import csv
import logging
import math
import random
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..audio import load_audio
from ..data.loader import worker_plan
from ..errors import AudioMAEError
from ..evaluation.tasks import Fold, TaskFormatError, read_task
from ..frontend import INPUT_FRAMES, log_mel, num_frames, standardize
from ..seeds import mix_seed
from .augment import mix, mixup_weight, spec_augment

log = logging.getLogger(__name__)

MIN_TAIL_FRAMES = INPUT_FRAMES // 2  # a last partial window needs >= 1 s of audio to count
REPORT_METRICS = ("top1_acc", "mAP", "d_prime")  # always reported, after the task's own metrics


# ---- tasks ---------------------------------------------------------------------------------------
@dataclass
class LabelledSplit:
    """The files of one split and their multi-hot targets ``(n, C)`` float32."""

    paths: list[Path]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class FinetuneTask:
    """A labelled task: class names, prediction type, metrics (primary first), splits and folds."""

    name: str
    source: Path
    prediction_type: str  # "multiclass" | "multilabel"
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    splits: dict[str, LabelledSplit]
    folds: list[Fold]
    split_mode: str = "trainvaltest"

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def train_split(self, fold: Fold) -> LabelledSplit:
        """The training splits of ``fold`` stacked into one."""
        parts = [self.splits[s] for s in fold.train]
        return LabelledSplit(
            [p for s in parts for p in s.paths], np.concatenate([s.targets for s in parts])
        )


def _report_metrics(task_metrics: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*task_metrics, *REPORT_METRICS]))


def load_task(
    source: str | Path, prediction_type: str | None = None, seed: int = 0
) -> FinetuneTask:
    """A HEAR task folder (all three split modes) or a CSV manifest (see :func:`read_manifest`)."""
    path = Path(source)
    if path.is_dir():
        return _from_hear(path, prediction_type)
    if path.suffix.lower() == ".csv" and path.is_file():
        return read_manifest(path, prediction_type, seed)
    raise TaskFormatError(f"{path}: neither a HEAR task folder nor a .csv manifest")


def _from_hear(path: Path, prediction_type: str | None) -> FinetuneTask:
    task = read_task(path)
    splits = {
        s: LabelledSplit([task.audio_path(s, f) for f in task.files(s)], task.targets(s))
        for s in task.split_names
    }
    return FinetuneTask(
        task.name,
        path,
        prediction_type or task.prediction_type,
        task.labels,
        _report_metrics(task.metrics),
        splits,
        task.folds(),
        task.split_mode,
    )


def read_manifest(
    path: str | Path,
    prediction_type: str | None = None,
    seed: int = 0,
    fractions: tuple[float, float] = (0.8, 0.1),
) -> FinetuneTask:
    """A CSV with header ``path,labels[,split]``: labels ``;``-separated, paths relative to the CSV.

    Without a ``split`` column the rows are shuffled with ``seed`` and cut 80 / 10 / 10 into
    train / valid / test. The task is multilabel when any row has two or more labels (or when
    ``prediction_type`` says so); class order is sorted label names.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "labels"} <= set(reader.fieldnames):
            raise TaskFormatError(f"{path}: expected a header with columns path,labels[,split]")
        rows = [
            (
                r["path"],
                [x.strip() for x in (r["labels"] or "").split(";") if x.strip()],
                (r.get("split") or "").strip(),
            )
            for r in reader
        ]
    if not rows:
        raise TaskFormatError(f"{path}: no rows")
    unlabelled = [p for p, labels, _ in rows if not labels]
    if unlabelled:
        raise TaskFormatError(f"{path}: row(s) without labels: {', '.join(unlabelled[:3])}")
    has_split = any(s for _, _, s in rows)
    if has_split:
        bad = sorted({s for _, _, s in rows if s not in ("train", "valid", "test")})
        if bad:
            raise TaskFormatError(f"{path}: split values must be train, valid or test, got {bad}")
    else:
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        n_train, n_valid = int(fractions[0] * len(rows)), max(1, int(fractions[1] * len(rows)))
        names = {
            i: "train" if k < n_train else "valid" if k < n_train + n_valid else "test"
            for k, i in enumerate(order)
        }
        rows = [(p, labels, names[i]) for i, (p, labels, _) in enumerate(rows)]
    labels = tuple(sorted({x for _, ls, _ in rows for x in ls}))
    kind = prediction_type or (
        "multilabel" if any(len(ls) > 1 for _, ls, _ in rows) else "multiclass"
    )
    index = {label: i for i, label in enumerate(labels)}
    splits: dict[str, LabelledSplit] = {}
    for split in ("train", "valid", "test"):
        mine = [(p, ls) for p, ls, s in rows if s == split]
        if not mine:
            raise TaskFormatError(f"{path}: the {split} split is empty")
        y = np.zeros((len(mine), len(labels)), dtype=np.float32)
        for r, (_, ls) in enumerate(mine):
            y[r, [index[x] for x in ls]] = 1.0
        splits[split] = LabelledSplit([(path.parent / p) for p, _ in mine], y)
    metrics = ("top1_acc",) if kind == "multiclass" else ("mAP",)
    return FinetuneTask(
        path.stem,
        path,
        kind,
        labels,
        _report_metrics(metrics),
        splits,
        [Fold(("train",), "valid", "test")],
    )


# ---- clips -> standardised log-mel, windows ------------------------------------------------------
def clip_logmel(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Mono 16 kHz samples ``(N,)`` -> log-mel ``(T, 80)`` standardised over the whole clip."""
    wav = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(1, -1)
    return standardize(log_mel(wav), unbiased=True)[0, 0]


def pad_to_window(lms: torch.Tensor) -> torch.Tensor:
    """``(T, 80)`` with ``T < 200`` -> zero-padded ``(200, 80)``; longer clips unchanged."""
    if lms.shape[0] >= INPUT_FRAMES:
        return lms
    return torch.nn.functional.pad(lms, (0, 0, 0, INPUT_FRAMES - lms.shape[0]))


def window_starts(frames: int) -> list[int]:
    """Start frames of the evaluation windows of a clip of ``frames`` frames (module docstring)."""
    if frames <= INPUT_FRAMES:
        return [0]
    starts = list(range(0, frames - INPUT_FRAMES + 1, INPUT_FRAMES))
    tail = frames - (starts[-1] + INPUT_FRAMES)
    if tail >= MIN_TAIL_FRAMES:
        starts.append(frames - INPUT_FRAMES)
    return starts


def clip_windows(lms: torch.Tensor) -> torch.Tensor:
    """Standardised log-mel ``(T, 80)`` -> evaluation windows ``(S, 1, 200, 80)``."""
    lms = pad_to_window(lms)
    return torch.stack([lms[s : s + INPUT_FRAMES] for s in window_starts(lms.shape[0])]).unsqueeze(
        1
    )


def stream_windows(source, per: int = 64) -> Iterator[tuple[torch.Tensor, int | None]]:
    """The evaluation windows of a long clip (:func:`window_starts`), in memory that does not
    grow with its length: ``(windows (c <= per + 1, 1, 200, 80), frames)`` batches, standardised
    over the whole clip (:mod:`audiomaepp.embedding.stream`: statistics first, then the chunks);
    ``frames`` is the clip's frame count, on every batch. ``source``: a
    :class:`~audiomaepp.embedding.stream.SampleSource` (an array or a file read block by block).

    Window ``k`` starts at frame ``200 k``, i.e. it is time-major chunk ``k``; a last partial
    window of >= 1 s is the clip's last 200 frames (the end of chunk ``k - 1`` and the start of
    the partial chunk ``k``); a clip of at most 200 frames is one zero-padded window."""
    from ..embedding.stream import clip_stats, standardized_chunks
    from ..frontend import LogMelFrontend

    frontend = LogMelFrontend()

    def chunks_for(num_samples: int) -> int:  # time-major chunks: ceil(frames / 200)
        return -(-num_frames(num_samples, frontend.cfg.hop_length) // INPUT_FRAMES)

    stats = clip_stats(source, frontend, chunks_for, per)
    frames = stats.frames
    full = frames // INPUT_FRAMES if frames > INPUT_FRAMES else 1  # windows at 200 k
    tail = frames - full * INPUT_FRAMES if frames > INPUT_FRAMES else 0
    done, previous = 0, None
    for chunks in standardized_chunks(source, stats, frontend, chunks_for, per):
        take = chunks[: max(0, full - done)]
        windows = [take]
        if tail >= MIN_TAIL_FRAMES and done <= full < done + len(chunks):  # the partial chunk
            last_full = chunks[full - 1 - done] if full > done else previous
            joined = torch.cat([last_full, chunks[full - done]])  # (400, 80)
            windows.append(joined[tail : tail + INPUT_FRAMES][None])
        previous = chunks[-1]
        done += len(chunks)
        batch = torch.cat(windows)
        if len(batch):
            yield batch.unsqueeze(1), frames


def random_window(lms: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A uniformly random 200-frame window ``(200, 80)`` of a standardised log-mel."""
    lms = pad_to_window(lms)
    start = int(rng.integers(0, lms.shape[0] - INPUT_FRAMES + 1))
    return lms[start : start + INPUT_FRAMES]


class LogMelCache:
    """Standardised log-mels of decoded clips, kept as float16 up to ``max_mb`` (oldest dropped
    first).

    Values are always returned float16-rounded (a standardised log-mel loses nothing that matters:
    ~3 significant digits around unit scale), whether they came from the cache or the file.

    Each process (and DataLoader worker) has its own; a clip that cannot be decoded raises
    :class:`~audiomaepp.errors.AudioMAEError` naming the file.
    """

    def __init__(self, max_mb: float = 1024.0) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0

    def get(self, path: Path) -> torch.Tensor:
        key = str(path)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key].float()
        stored = clip_logmel(load_audio(path)).half()
        self._items[key] = stored
        self._bytes += stored.numel() * 2
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.numel() * 2
        # always the float16-rounded values, cached or not: a resumed run (empty cache) must see
        # exactly what the uninterrupted run saw
        return stored.float()


# ---- the training stream -------------------------------------------------------------------------
@dataclass
class CropAugment:
    """Augmentation of training crops (from :class:`~audiomaepp.finetune.FinetuneConfig`)."""

    freq_mask: int = 30
    time_mask: int = 40
    mixup: float = 0.5
    mixup_alpha: float = 10.0


def sampling_weights(targets: np.ndarray) -> np.ndarray:
    """Per-clip weights ``sum over its labels of 1 / count(label)``, normalised to sum 1.

    AudioMAE's AudioSet-2M sampler: a clip of rare classes is drawn as often as one of common ones.
    """
    counts = targets.sum(axis=0)
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    w = (targets * inv).sum(axis=1)
    w = np.where(w > 0, w, inv[inv > 0].min() if (inv > 0).any() else 1.0)
    return w / w.sum()


_ORDER, _ITEM = 1, 2  # RNG purposes


class LabelledCropDataset(IterableDataset):
    """This rank's training crops of one epoch: ``{"x": (1, 200, 80), "y": (C,)}`` dicts.

    The epoch's order is a permutation of the training clips (or, with ``weights``, draws with
    replacement) from ``(seed, epoch)``, cycled up to ``samples_per_epoch``. Each optimizer step's
    global batch is cut into ``world_size`` contiguous parts of ``rank_batch`` samples, rank ``r``
    taking the ``r``-th (the layout the trainer's per-sample noise rows assume), so 2 ranks see
    the samples and noise 1 process sees. Every random choice of the sample at position ``p`` (crop,
    masks, mixup partner and weight) comes from ``(seed, epoch, p)``, so the stream does not
    depend on the number of workers or on resuming. Worker / resume arithmetic is the pretraining
    loader's (:func:`audiomaepp.data.loader.worker_plan`). A clip that cannot be decoded is logged
    once and replaced by the next clip of the order.
    """

    def __init__(
        self,
        split: LabelledSplit,
        samples_per_epoch: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        weights: np.ndarray | None = None,
        augment: CropAugment | None = None,
        rank_batch: int = 1,
        cache_mb: float = 1024.0,
    ) -> None:
        super().__init__()
        if len(split) == 0:
            raise ValueError("no training clips")
        self.split = split
        self.samples_per_epoch = samples_per_epoch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.rank_batch = (
            rank_batch  # samples of one optimizer step on this rank (global batch / world)
        )
        self.weights = weights
        self.augment = augment or CropAugment()
        self.batch_size = 1  # set by make_loader; maps start_index onto workers
        self.cache = LogMelCache(cache_mb)
        self._bad: set[int] = set()
        self._state = torch.zeros(2, dtype=torch.long).share_memory_()

    @property
    def samples_per_rank(self) -> int:
        return self.samples_per_epoch // self.world_size

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        self._state[0], self._state[1] = int(epoch), int(start_index)

    def __len__(self) -> int:
        return self.samples_per_rank - int(self._state[1])

    def order(self, epoch: int) -> np.ndarray:
        """Clip index of every global position of ``epoch``, ``(samples_per_epoch,)``."""
        rng = np.random.default_rng(mix_seed(self.seed, _ORDER, epoch))
        n = len(self.split)
        if self.weights is not None:
            return rng.choice(n, size=self.samples_per_epoch, replace=True, p=self.weights)
        reps = math.ceil(self.samples_per_epoch / n)
        return np.concatenate([rng.permutation(n) for _ in range(reps)])[: self.samples_per_epoch]

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start = int(self._state[0]), int(self._state[1])
        role, skip, count = worker_plan(
            self.samples_per_rank, self.batch_size, workers, worker, start
        )
        n = self.samples_per_rank
        batches = (
            range(role, math.ceil(n / self.batch_size), max(workers, 1)) if workers > 1 else [None]
        )
        local = (
            [
                p
                for j in batches
                for p in range(j * self.batch_size, min(n, (j + 1) * self.batch_size))
            ]
            if workers > 1
            else list(range(n))
        )
        order = self.order(epoch)
        for q in local[skip : skip + count]:
            yield self.sample(order, epoch, self.global_position(q))

    def global_position(self, q: int) -> int:
        """Position in the epoch's order of this rank's ``q``-th sample."""
        b = self.rank_batch
        return (q // b) * b * self.world_size + self.rank * b + q % b

    def _lms(self, order: np.ndarray, pos: int) -> tuple[torch.Tensor, int]:
        """The log-mel of the clip at ``pos`` (or of the next good one) and its index."""
        for k in range(len(order)):
            i = int(order[(pos + k) % len(order)])
            if i in self._bad:
                continue
            try:
                return self.cache.get(self.split.paths[i]), i
            except (AudioMAEError, OSError) as exc:
                self._bad.add(i)
                log.warning("training clip skipped: %s", exc)
        raise AudioMAEError("no training clip could be decoded")

    def sample(self, order: np.ndarray, epoch: int, pos: int) -> dict[str, torch.Tensor]:
        """The augmented crop and (soft) target of global position ``pos``."""
        rng = np.random.default_rng(mix_seed(self.seed, _ITEM, epoch, pos))
        lms, i = self._lms(order, pos)
        x, y = random_window(lms, rng), torch.from_numpy(self.split.targets[i])
        lam = mixup_weight(rng, self.augment.mixup, self.augment.mixup_alpha)
        if lam is not None:
            other, j = self._lms(order, int(rng.integers(len(order))))
            x, y = mix(
                x, random_window(other, rng), y, torch.from_numpy(self.split.targets[j]), lam
            )
        x = spec_augment(x, rng, self.augment.freq_mask, self.augment.time_mask)
        return {"x": x.unsqueeze(0).float(), "y": y.float()}


@dataclass
class EvalSet:
    """An evaluation split with its decoded windows kept in a :class:`LogMelCache`."""

    split: LabelledSplit
    cache: LogMelCache = field(default_factory=LogMelCache)
    failed: dict[int, str] = field(default_factory=dict)

    def windows(self, i: int) -> torch.Tensor | None:
        try:
            return clip_windows(self.cache.get(self.split.paths[i]))
        except (AudioMAEError, OSError) as exc:
            self.failed[i] = str(exc)
            return None


__all__ = [
    "FinetuneTask",
    "LabelledSplit",
    "load_task",
    "read_manifest",
    "clip_logmel",
    "clip_windows",
    "window_starts",
    "random_window",
    "LogMelCache",
    "LabelledCropDataset",
    "CropAugment",
    "sampling_weights",
    "EvalSet",
    "REPORT_METRICS",
]
