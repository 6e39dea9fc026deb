"""Streaming pretraining data: shards (or a folder of audio) -> standardised crops ``(1, 200, 80)``.

Each crop is standardised with the population mean and std of its whole stored clip (spec §1):
``crops_per_clip`` random windows of ``frames`` (200, the model's input) frames are cut from the
clip's stored log-mel ``(T, 80)`` (clips shorter than that are tiled), and each window is
standardised as the whole clip would have been. From a version-2 shard the statistics come from
the shard's index (computed, with the finiteness check, once by ``prepare``) and only the window's
frames are read (one ``pread``); version-1 shard members and decoded audio are held whole and their
statistics computed on reading. A long audio file in a folder is read segment by segment, as
``prepare`` would store it. :func:`make_loader` builds each batch in its DataLoader worker,
straight into shared memory (no per-crop tensors to collate).

How one epoch is laid out, so that it is exact, disjoint and reproducible:

* ``samples_per_epoch`` crops per epoch in total; rank ``r`` of ``world_size`` yields
  ``samples_per_epoch // world_size`` of them.
* Within a rank, the DataLoader hands out batches round robin over its ``W`` workers; worker ``w``
  produces batches ``w, w + W, ...`` of the rank's stream (only the very last batch is short), so
  the rank's sequence does not depend on timing.
* Every (rank, worker) pair is a *slot* (``rank * W + worker``). Each epoch the shard list is
  shuffled with ``(seed, epoch)`` and dealt to the slots (each shard to the slot with the fewest
  clips so far), so slots read disjoint shards; with fewer shards than slots, slots sharing a
  shard take disjoint subsets of its clips (with fewer clips than sharers they wrap round, each
  taking one clip, so some clips repeat). A slot makes passes over its shards (in a new order
  each pass) until it has produced its count.
* A slot reads ``interleave`` (8) of its shards at once, each next clip from a random one of
  them, so its stream (and the shuffle buffer) mixes several shards, not one folder's worth.
* A shard that cannot be read (missing, truncated, corrupt, a broken index) is skipped for the
  pass with one warning; a slot left with no readable clip raises an error naming its shards. A
  version-1 member that is not a finite ``(T >= 1, 80)`` float array (wrong shape, zero frames,
  NaN, garbage) is skipped with one warning naming it, as is a clip whose frames cannot be read.
* A shuffle buffer mixes clips within a slot's pass and is emptied at the end of the pass, so a
  pass yields each of the slot's clips exactly once. It holds ``(key, ClipRef)`` pairs (shard,
  offset, frames, statistics), not the data, so a large buffer is cheap; a clip is read when it
  leaves the buffer.
* All random draws come from generators seeded by ``(seed, epoch, slot)``: the same
  ``(seed, rank, epoch)``, ``world_size``, ``num_workers`` and batch size give the same crops.

Resuming mid-epoch: ``start_index`` is the number of samples this rank has already consumed in
this epoch (``batches_done * batch_size``). The stream is regenerated and the first
``start_index`` samples are skipped without reading their clips (only the shuffle decisions and
the shard indexes are replayed). With ``num_workers > 1`` it must be a multiple of the
batch size, and each worker takes over the role of the worker that would have produced the next
batch, so the resumed run continues the very same sequence.
"""

from __future__ import annotations

import glob
import heapq
import itertools
import logging
import math
import os
import random
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..audio import (
    AUDIO_EXTENSIONS,
    duration_s,
    find_audio_files,
    load_audio,
    load_segment,
    num_segments,
)
from ..errors import InvalidAudioError, ShardFormatError
from ..frontend import INPUT_FRAMES, STD_EPS, crop_start, log_mel, tile_to
from ..seeds import mix_seed
from .shards import (
    DEFAULT_SEGMENT_S,
    MANIFEST,
    N_MELS,
    ClipRef,
    MemberRef,
    OpenShards,
    ShardLayout,
    decode_npy,
    iter_clip_members,
    load_manifest,
    manifest_shards,
    read_index,
    scan_shard,
    whole_clip_stats,
)

__all__ = [
    "CropDataset",
    "ShardDataset",
    "FolderDataset",
    "worker_plan",
    "make_pretraining_dataset",
    "make_loader",
]

logger = logging.getLogger(__name__)

Item = tuple[str, Any]  # (key, payload): a ClipRef / MemberRef (shards) or (Path, segment) (folder)


def worker_plan(
    samples: int, batch_size: int, num_workers: int, worker_id: int, start_index: int = 0
) -> tuple[int, int, int]:
    """``(role, skip, count)`` for DataLoader worker ``worker_id`` of ``num_workers``.

    The rank's stream of ``samples`` crops is cut into batches of ``batch_size``; batch ``j`` is
    produced by role ``j % num_workers``. After ``start_index`` consumed samples (a whole number
    of batches ``q``) the DataLoader restarts its round robin at worker 0, so worker ``w`` plays
    role ``(w + q) % num_workers``; it skips the role's first ``skip`` crops and yields ``count``.
    """
    if not 0 <= start_index <= samples:
        raise ValueError(f"start_index must be in [0, {samples}], got {start_index}")
    if num_workers <= 1:
        return 0, start_index, samples - start_index
    if start_index % batch_size:
        raise ValueError(
            f"start_index {start_index} is not a multiple of the batch size {batch_size}: with "
            f"{num_workers} DataLoader workers a run can only resume at a batch boundary"
        )
    q = start_index // batch_size
    role = (worker_id + q) % num_workers
    n_batches = math.ceil(samples / batch_size)
    mine = range(role, n_batches, num_workers)
    sizes = [min(batch_size, samples - j * batch_size) for j in mine]
    skip = sum(s for j, s in zip(mine, sizes, strict=True) if j < q)
    return role, skip, sum(sizes) - skip


def _rng(*parts: int) -> random.Random:
    """A Python RNG seeded from integers by the one seed mixer (well mixed, platform stable)."""
    return random.Random(mix_seed(*parts))


# RNG purposes, so the streams never share draws
_ASSIGN, _ORDER, _SHUFFLE, _CROP, _INTERLEAVE = range(5)


class _Clip(NamedTuple):
    """One loaded clip: its raw crop windows and the whole clip's statistics."""

    windows: list[torch.Tensor]  # crops_per_clip unnormalised (frames, 80) log-mel windows
    mean: float  # the whole clip's mean and population std (float32 values)
    std: float


class _Standardiser:
    """Standardises crops a batch at a time: ``(window - mean) / (std + 1e-8)`` in float32.

    ``standardize``'s arithmetic with each crop's own whole-clip statistics; the windows are
    gathered in a staging buffer of their stored dtype (float16 from shards) and converted,
    shifted and scaled in three vectorised passes over the batch, not three per crop.
    """

    def __init__(self, batch_size: int, frames: int, dtype: torch.dtype) -> None:
        self.stage = torch.empty(batch_size, 1, frames, N_MELS, dtype=dtype)
        self.means: list[float] = []
        self.stds: list[float] = []

    def add(self, window: torch.Tensor, clip: _Clip) -> None:
        self.stage[len(self.means), 0].copy_(window)
        self.means.append(clip.mean)
        self.stds.append(clip.std)

    def finish(self, out: torch.Tensor) -> None:
        """Write the standardised crops added so far into ``out`` ``(n, 1, frames, 80)``; reset."""
        n = len(self.means)
        mean = torch.tensor(self.means, dtype=torch.float32).view(n, 1, 1, 1)
        scale = torch.tensor(self.stds, dtype=torch.float32).view(n, 1, 1, 1) + STD_EPS
        out.copy_(self.stage[:n])  # float16 -> float32 is exact
        out.sub_(mean).div_(scale)
        self.means, self.stds = [], []


def _batch_buffer(n: int, frames: int) -> torch.Tensor:
    """``(n, 1, frames, 80)`` float32, in shared memory inside a DataLoader worker.

    A worker's batch travels to the main process as a shared-memory handle; allocating it there
    in the first place (as torch's own collate does) saves a copy of every batch.
    """
    if get_worker_info() is None:
        return torch.empty(n, 1, frames, N_MELS)
    storage = torch.UntypedStorage._new_shared(n * frames * N_MELS * 4)
    return torch.empty(0).set_(storage).view(n, 1, frames, N_MELS)


class CropDataset(IterableDataset):
    """Shared machinery of :class:`ShardDataset` and :class:`FolderDataset` (see module docs).

    Yields ``(1, frames, 80)`` float32 crops, or ``(crop, key)`` when ``with_keys``.

    Arguments and why their defaults:

    * ``samples_per_epoch``: crops per epoch over all ranks (each rank: ``// world_size``).
    * ``rank`` / ``world_size`` (0 / 1): passed in explicitly, never read from torch.distributed.
    * ``seed`` (0), ``epoch`` (0): with rank, they fix every random choice.
    * ``start_index`` (0): samples of this epoch this rank already consumed (resume).
    * ``shuffle_buffer`` (5000): about one 1-GB shard of 10-s clips, so clips of a whole shard mix;
      it holds references only (~100 bytes each), 0 or 1 disables shuffling.
    * ``interleave`` (8): units (shards) a slot reads at once, drawing each next clip from a
      random one of them, so the shuffle buffer mixes ~8 shards rather than one; 8 open tar
      files per worker is cheap. 1 reads the units one after another.
    * ``crops_per_clip`` (1): the paper's one crop per clip per epoch. ``k > 1`` is an opt-in that
      changes the recipe: ``k`` windows of each clip (independent starts, so they may overlap)
      follow each other in the stream, an epoch of the same ``samples_per_epoch`` visits ``k``
      times fewer clips, and a batch holds crops of ``B / k`` clips only (less diverse). It saves
      the per-clip work (shard index, statistics; a whole decode for folders and version-1
      shards), which for version-2 shards is small: see ``docs/SCALE.md``.
    * ``frames`` (200, ``INPUT_FRAMES``): one model input is 2 s = 200 frames.
    * ``batch_size`` (1): the DataLoader's, used only to map ``start_index`` onto workers
      (:func:`make_loader` sets it).
    * ``with_keys`` (False): also yield the clip key, for debugging and tests.
    """

    split_units = True  # slots sharing a unit (too few units) take disjoint subsets of its clips
    window_dtype = torch.float16  # what _load's windows hold (shards store float16)

    def __init__(
        self,
        samples_per_epoch: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        start_index: int = 0,
        shuffle_buffer: int = 5000,
        interleave: int = 8,
        crops_per_clip: int = 1,
        frames: int = INPUT_FRAMES,
        batch_size: int = 1,
        with_keys: bool = False,
    ) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        if samples_per_epoch < world_size:
            raise ValueError(f"samples_per_epoch {samples_per_epoch} < world_size {world_size}")
        if (
            seed < 0
            or crops_per_clip < 1
            or frames < 1
            or batch_size < 1
            or shuffle_buffer < 0
            or interleave < 1
        ):
            raise ValueError(
                "seed, shuffle_buffer must be >= 0; crops_per_clip, frames, batch_size, "
                "interleave >= 1"
            )
        self.samples_per_epoch = samples_per_epoch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_buffer = shuffle_buffer
        self.interleave = interleave
        self.crops_per_clip = crops_per_clip
        self.frames = frames
        self.batch_size = batch_size  # the DataLoader's; only used to map start_index onto workers
        self.with_keys = with_keys
        # Shared memory, so set_epoch reaches persistent DataLoader workers (they hold a copy).
        self._state = torch.zeros(2, dtype=torch.long).share_memory_()
        self.set_epoch(epoch, start_index)

    # -- epoch / resume ------------------------------------------------------------------------

    @property
    def samples_per_rank(self) -> int:
        """Crops this rank yields in a full epoch: ``samples_per_epoch // world_size``."""
        return self.samples_per_epoch // self.world_size

    @property
    def epoch(self) -> int:
        return int(self._state[0])

    @property
    def start_index(self) -> int:
        return int(self._state[1])

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch (reshuffles everything) and the resume position within it.

        ``start_index``: samples this rank already consumed in this epoch (0 = from the start).
        Call before ``iter(loader)``; it also reaches persistent workers.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_index <= self.samples_per_rank:
            raise ValueError(
                f"start_index must be in [0, {self.samples_per_rank}], got {start_index}"
            )
        self._state[0], self._state[1] = int(epoch), int(start_index)

    def __len__(self) -> int:
        """Crops left in this rank's epoch (all of them unless resuming)."""
        return self.samples_per_rank - self.start_index

    # -- to be provided by subclasses -------------------------------------------------------------

    def _num_units(self) -> int:
        """Number of units (shards / files)."""
        raise NotImplementedError

    def _unit_items(self, unit: int) -> Iterator[Item]:
        """Items of one unit (shard / file), in a fixed order."""
        raise NotImplementedError

    def _load(self, key: str, payload: Any, gen: torch.Generator) -> _Clip | None:
        """The item's crop windows (starts drawn from ``gen``), or None to skip it (bad file)."""
        raise NotImplementedError

    def _counts_unread(self, payload: Any) -> bool:
        """Whether a skipped (unread) item would have produced crops; shards: always."""
        return True

    def _unit_name(self, unit: int) -> str:
        """The unit's path, for error messages."""
        return str(unit)

    # -- the stream -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.iter_worker(worker_id, num_workers)

    def iter_worker(self, worker_id: int = 0, num_workers: int = 1) -> Iterator[Any]:
        """The crops DataLoader worker ``worker_id`` of ``num_workers`` yields (for tests/tools)."""
        one = _Standardiser(1, self.frames, self.window_dtype)
        for key, window, clip in self._stream(worker_id, num_workers, self.batch_size):
            crop = torch.empty(1, 1, self.frames, N_MELS)
            one.add(window, clip)
            one.finish(crop)
            yield (crop[0], key) if self.with_keys else crop[0]

    def _unit_sizes(self) -> list[int]:
        """Clips per unit, used to balance the slots; every unit counts 1 unless overridden."""
        return [1] * self._num_units()

    def _assignment(self, epoch: int, slot: int, slots: int) -> list[tuple[int, int, int]]:
        """``(unit, modulus, remainder)``: the slot's units this epoch and which of their clips.

        The units, shuffled with ``(seed, epoch)`` (the same on every rank, so this is a
        partition), go one by one to the slot with the fewest clips so far. With fewer units than
        slots, the slots sharing a unit take every ``modulus``-th clip from ``remainder`` on; a
        unit with fewer clips than sharers gives each sharer one clip, wrapping round.
        """
        sizes = self._unit_sizes()
        n = len(sizes)
        perm = list(range(n))
        _rng(self.seed, epoch, _ASSIGN).shuffle(perm)
        if n < slots:
            if not self.split_units:
                return [(perm[slot % n], 1, 0)]
            unit = perm[slot % n]
            sharing = len(range(slot % n, slots, n))  # slots reading the same unit
            mod = max(1, min(sharing, sizes[unit]))  # fewer clips than sharers: wrap round
            return [(unit, mod, (slot // n) % mod)]
        heap = [(0, s) for s in range(slots)]  # (clips so far, slot): ties go to the lower slot
        mine = []
        for unit in perm:
            total, owner = heapq.heappop(heap)
            if owner == slot:
                mine.append((unit, 1, 0))
            heapq.heappush(heap, (total + sizes[unit], owner))
        return mine

    def _passes(self, epoch: int, slot: int, slots: int) -> Iterator[Iterator[Item]]:
        """One iterator per pass over the slot's clips (unit order re-shuffled every pass)."""
        plan = self._assignment(epoch, slot, slots)
        rng = _rng(self.seed, epoch, slot, slots, _ORDER)
        pick = _rng(self.seed, epoch, slot, slots, _INTERLEAVE)
        while True:
            rng.shuffle(plan)
            units = (
                (item for i, item in enumerate(self._unit_items(unit)) if i % mod == rem)
                for unit, mod, rem in plan
            )
            yield self._interleaved(units, pick)

    def _interleaved(self, units: Iterator[Iterator[Item]], rng: random.Random) -> Iterator[Item]:
        """Read ``interleave`` units at once, each next item from a random one of them.

        A unit is opened only when it joins the active set, and the next one replaces it when it
        runs out, so every item of every unit is yielded exactly once per pass.
        """
        active = list(itertools.islice(units, self.interleave))
        while active:
            i = rng.randrange(len(active)) if len(active) > 1 else 0
            item = next(active[i], None)
            if item is not None:
                yield item
                continue
            following = next(units, None)
            if following is None:
                active.pop(i)
            else:
                active[i] = following

    def _items(self, epoch: int, slot: int, slots: int) -> Iterator[Item]:
        """The slot's clips, shuffled within each pass, forever.

        The buffer is emptied at the end of every pass, so each pass gives every clip of the slot
        exactly once (a buffer spanning passes would repeat some clips before others were seen).
        """
        rng = _rng(self.seed, epoch, slot, slots, _SHUFFLE)
        for items in self._passes(epoch, slot, slots):
            found = False
            for item in self._shuffled(items, rng):
                found = True
                yield item
            if not found:
                raise RuntimeError(
                    f"{type(self).__name__}: slot {slot} of {slots} has no clips to read in "
                    f"{self._slot_names(epoch, slot, slots)}"
                )

    def _slot_names(self, epoch: int, slot: int, slots: int) -> str:
        """The slot's units this epoch, for error messages."""
        return ", ".join(self._unit_name(u) for u, _, _ in self._assignment(epoch, slot, slots))

    def _shuffled(self, items: Iterator[Item], rng: random.Random) -> Iterator[Item]:
        """Shuffle buffer: fill ``shuffle_buffer`` items, then emit a random one per new item."""
        size = self.shuffle_buffer
        if size <= 1:
            yield from items
            return
        buf: list[Item] = []
        for item in items:
            if len(buf) < size:
                buf.append(item)
                continue
            i = rng.randrange(size)
            buf[i], item = item, buf[i]
            yield item
        rng.shuffle(buf)  # end of the pass: flush
        yield from buf

    def _crops(self, epoch: int, slot: int, slots: int, skip: int, count: int) -> Iterator[Any]:
        """``(key, window, clip)`` of crops ``skip .. skip + count`` of the slot's stream.

        Skipped clips are not read. Each clip draws one seed from the slot's crop stream, read or
        not, so a resumed stream cuts the very crops the uninterrupted one would have.
        """
        if count <= 0:
            return
        crop_rng = _rng(self.seed, epoch, slot, slots, _CROP)
        gen = torch.Generator()  # re-seeded per clip: the windows depend on the clip's seed only
        pos, end, per_clip = 0, skip + count, self.crops_per_clip
        # Give up when none of the slot's clips loads. Failures in a row can span the end of one
        # pass and the start of the next (reshuffled), so up to 2 * (clips - 1) while one clip is
        # still readable; more than 2 * clips means none is.
        sizes = self._unit_sizes()
        slot_clips = sum(
            len(range(rem, sizes[u], mod)) for u, mod, rem in self._assignment(epoch, slot, slots)
        )
        failed, max_failed = 0, 2 * max(1, slot_clips)
        try:
            for key, payload in self._items(epoch, slot, slots):
                crop_seed = crop_rng.getrandbits(63)  # drawn for skipped clips too
                if pos + per_clip <= skip:
                    pos += per_clip if self._counts_unread(payload) else 0
                    continue
                clip = self._load(key, payload, gen.manual_seed(crop_seed))
                if clip is None:
                    failed += 1
                    if failed > max_failed:
                        raise RuntimeError(
                            f"{type(self).__name__}: slot {slot} of {slots}: {failed} clips in a "
                            f"row failed to load; no readable clip in "
                            f"{self._slot_names(epoch, slot, slots)}"
                        )
                    continue
                failed = 0
                for window in clip.windows:
                    if pos >= skip:
                        yield key, window, clip
                    pos += 1
                    if pos >= end:
                        return
        finally:
            self._release()

    def _release(self) -> None:
        """Free per-iteration resources (open files) when a stream ends or is abandoned."""

    def _starts(self, t: int, gen: torch.Generator) -> list[int]:
        """First frames of the clip's ``crops_per_clip`` windows (0 for a clip that is tiled)."""
        span = max(t, self.frames)  # a short clip is tiled to exactly ``frames`` first
        return [crop_start(span, self.frames, gen) for _ in range(self.crops_per_clip)]

    def _whole_clip(self, lms: torch.Tensor, gen: torch.Generator) -> _Clip:
        """Windows of a clip held whole ``(T, 80)``, with its statistics computed here.

        ``lms`` is float16 (a version-1 member) or float32 (decoded audio); the statistics are
        those ``standardize`` computes on its float32 values.
        """
        mean, std = whole_clip_stats(lms)  # population std (spec §1), as the writer's
        tiled = tile_to(lms, self.frames)
        windows = [tiled[s : s + self.frames] for s in self._starts(lms.shape[0], gen)]
        return _Clip(windows, mean, std)

    def _stream(self, worker_id: int, num_workers: int, batch_size: int) -> Iterator[Any]:
        epoch, start = self.epoch, self.start_index
        role, skip, count = worker_plan(
            self.samples_per_rank, batch_size, num_workers, worker_id, start
        )
        slot, slots = self.rank * num_workers + role, self.world_size * num_workers
        return self._crops(epoch, slot, slots, skip, count)

    def iter_batches(
        self, batch_size: int, worker_id: int = 0, num_workers: int = 1, drop_last: bool = False
    ) -> Iterator[Any]:
        """The batches ``(B, 1, frames, 80)`` DataLoader worker ``worker_id`` yields (or
        ``(batch, keys)`` when ``with_keys``): :meth:`iter_worker`'s crops, ``batch_size`` at a
        time, each written straight into its batch (in shared memory inside a worker)."""
        crops = self._stream(worker_id, num_workers, batch_size)
        batcher = _Standardiser(batch_size, self.frames, self.window_dtype)
        while True:
            keys = []
            for key, window, clip in itertools.islice(crops, batch_size):
                batcher.add(window, clip)
                keys.append(key)
            if not keys or (drop_last and len(keys) < batch_size):
                return
            batch = _batch_buffer(len(keys), self.frames)
            batcher.finish(batch)
            yield (batch, keys) if self.with_keys else batch


class ShardDataset(CropDataset):
    """Crops from log-mel shards written by ``prepare`` (see the module docstring).

    ``shards``: tar paths. ``layouts``: their :class:`~audiomaepp.data.shards.ShardLayout` (from
    the manifest; :meth:`from_dir` passes them); ``clip_counts``: their clip counts when the
    layouts are not known (then each worker reads a shard's tar headers once to find its index).
    Given neither, the tar headers are read here. ``samples_per_epoch`` defaults to
    ``clips * crops_per_clip``. Other keyword arguments: see :class:`CropDataset`.
    """

    def __init__(
        self,
        shards: Sequence[str | Path],
        samples_per_epoch: int | None = None,
        *,
        clip_counts: Sequence[int] | None = None,
        layouts: Sequence[ShardLayout | None] | None = None,
        **kwargs: Any,
    ) -> None:
        if not shards:
            raise ValueError("ShardDataset needs at least one shard")
        self.shards = [str(s) for s in shards]
        self._warned: set[str] = set()  # shards / clips already reported unreadable (per process)
        if layouts is None and clip_counts is None:
            layouts = [self._scan(i) for i in range(len(self.shards))]
        self.layouts: list[ShardLayout | None] = (
            list(layouts) if layouts is not None else [None] * len(self.shards)
        )
        if clip_counts is None:
            clip_counts = [lay.clips if lay is not None else 0 for lay in self.layouts]
        self.clip_counts = list(clip_counts)
        if samples_per_epoch is None:
            samples_per_epoch = sum(self.clip_counts) * kwargs.get("crops_per_clip", 1)
        super().__init__(samples_per_epoch, **kwargs)
        # per process: open shard files; enough for the interleaved shards and the shuffle
        # buffer's stragglers from shards that have just left the interleave
        self._files = OpenShards(capacity=2 * self.interleave)

    @classmethod
    def from_dir(
        cls, shard_dir: str | Path, samples_per_epoch: int | None = None, **kwargs: Any
    ) -> ShardDataset:
        """All shards listed by ``SHARD_DIR``'s manifest (node parts are merged on the fly)."""
        manifest = load_manifest(shard_dir)
        if not manifest["clips"]:
            raise ValueError(f"{shard_dir}: the manifest lists no clips (every input was skipped?)")
        paths, layouts = manifest_shards(shard_dir, manifest)
        return cls(paths, samples_per_epoch, layouts=layouts, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = OpenShards(self._files.capacity)  # open files stay in this process
        return state

    def _num_units(self) -> int:
        return len(self.shards)

    def _release(self) -> None:
        self._files.close()

    def _unit_sizes(self) -> list[int]:
        return self.clip_counts

    def _unit_name(self, unit: int) -> str:
        return self.shards[unit]

    def _warn_once(self, name: str, message: str, *args: Any) -> None:
        if name not in self._warned:  # once per shard / clip and worker, not once per pass
            self._warned.add(name)
            logger.warning(message, *args)

    def _scan(self, unit: int) -> ShardLayout | None:
        """The shard's layout from its tar headers; None when they cannot all be read.

        A damaged shard is then read member by member (version 1's way), which still gives the
        clips before a truncation and warns where it stops.
        """
        try:
            return scan_shard(self.shards[unit])
        except (tarfile.ReadError, OSError, EOFError):
            return None

    def _unit_items(self, unit: int) -> Iterator[Item]:
        """The shard's clips; an unreadable shard is skipped (from the error on) for this pass."""
        shard = self.shards[unit]
        if self.layouts[unit] is None:  # not known yet: read the headers, once per process
            self.layouts[unit] = self._scan(unit) or ShardLayout(1, 0)
        layout = self.layouts[unit]
        try:
            if layout.index is not None:
                try:
                    yield from read_index(shard, layout.index, self._files)
                    return
                except ValueError as exc:  # raised before the first clip: nothing was given yet
                    msg = "%s: %s; reading its members one by one"
                    self._warn_once(f"{shard}#index", msg, shard, exc)
                    self.layouts[unit] = ShardLayout(1, layout.clips)
            yield from iter_clip_members(shard)
        except ShardFormatError:
            raise
        except (tarfile.ReadError, OSError, EOFError, ValueError) as exc:
            self._warn_once(shard, "%s: skipping unreadable shard (%s)", shard, exc)

    def _load(self, key: str, payload: ClipRef | MemberRef, gen: torch.Generator) -> _Clip | None:
        """The clip's crop windows, or None (one warning) when it cannot be read or is bad."""
        if isinstance(payload, ClipRef):
            return self._load_indexed(key, payload, gen)
        return self._load_member(key, payload, gen)

    def _load_indexed(self, key: str, ref: ClipRef, gen: torch.Generator) -> _Clip | None:
        """Version 2: read only each window's frames; the statistics come from the index."""
        starts = self._starts(ref.frames, gen)
        try:
            if ref.frames >= self.frames:
                windows = [ref.read_frames(self._files, s, self.frames) for s in starts]
            else:  # tiled: every start is 0
                windows = [tile_to(ref.read_frames(self._files, 0, ref.frames), self.frames)]
                windows *= len(starts)
        except (OSError, EOFError) as exc:
            self._warn_once(key, "%s: skipping clip %s: unreadable (%s)", ref.shard, key, exc)
            return None
        return _Clip(windows, ref.mean, ref.std)

    def _load_member(self, key: str, ref: MemberRef, gen: torch.Generator) -> _Clip | None:
        """Version 1: parse and check the whole member, compute its statistics.

        A shard member is untrusted input: a truncated or corrupt ``.npy``, another shape, zero
        frames or NaN/inf values would kill the worker or reach the loss, so each is checked.
        """
        try:
            array = decode_npy(ref.read(self._files))
            problem = _member_problem(array)
        except Exception as exc:  # numpy raises ValueError, EOFError, ... on corrupt bytes
            problem = f"unreadable ({type(exc).__name__}: {exc})"
        if problem is not None:
            self._warn_once(key, "%s: skipping clip %s: %s", ref.shard, key, problem)
            return None
        return self._whole_clip(torch.from_numpy(array), gen)  # (T, 80) float16


def _member_problem(array: np.ndarray) -> str | None:
    """Why a decoded member is not a stored log-mel ``(T >= 1, 80)`` of finite floats, or None."""
    if array.dtype.kind != "f":
        return f"dtype {array.dtype}, expected float16"
    if array.ndim != 2 or array.shape[1] != N_MELS:
        return f"shape {tuple(array.shape)}, expected (frames, {N_MELS})"
    if array.shape[0] < 1:
        return "zero frames"
    if not np.isfinite(array).all():
        return "NaN or infinite values"
    return None


class FolderDataset(CropDataset):
    """Crops from audio files decoded on the fly (``load_audio`` + ``log_mel``): small jobs only.

    ``files``: audio paths. Files that fail to decode are skipped with a warning naming them. A
    file longer than ``segment_s`` (30 s, as ``prepare``) gives one clip per segment, each decoded
    alone (seek + decode of that stretch), so memory does not grow with the file's length and the
    crops are those of the shards ``prepare`` would write; ``None`` decodes every file whole.
    ``samples_per_epoch`` defaults to ``clips * crops_per_clip``. With fewer files than
    (rank, worker) slots, slots repeat files. Resuming skips files without decoding, judging them
    by their header only, so a file that is only found bad when decoded (NaN samples) shifts the
    resumed position by its crops.
    """

    split_units = False
    window_dtype = torch.float32  # log-mels computed here are float32

    def __init__(
        self,
        files: Sequence[str | Path],
        samples_per_epoch: int | None = None,
        *,
        segment_s: float | None = DEFAULT_SEGMENT_S,
        **kwargs: Any,
    ) -> None:
        if not files:
            raise ValueError("FolderDataset needs at least one audio file")
        self.files = [Path(f) for f in files]
        self.segment_s = segment_s
        self.segments = [self._count_segments(f) for f in self.files]  # None: decode it whole
        if samples_per_epoch is None:
            samples_per_epoch = sum(self._unit_sizes()) * kwargs.get("crops_per_clip", 1)
        self._warned: set[str] = set()
        super().__init__(samples_per_epoch, **kwargs)

    def _count_segments(self, path: Path) -> int | None:
        seconds = duration_s(path) if self.segment_s is not None else None
        if seconds is None or self.segment_s is None or seconds <= self.segment_s:
            return None
        return num_segments(seconds, self.segment_s)

    def _num_units(self) -> int:
        return len(self.files)

    def _unit_sizes(self) -> list[int]:
        return [n or 1 for n in self.segments]

    def _unit_name(self, unit: int) -> str:
        return str(self.files[unit])

    def _unit_items(self, unit: int) -> Iterator[Item]:
        path, n = self.files[unit], self.segments[unit]
        if n is None:
            yield str(path), (path, None)
        else:
            for i in range(n):
                yield f"{path}_s{i:05d}", (path, i)

    def _load(
        self, key: str, payload: tuple[Path, int | None], gen: torch.Generator
    ) -> _Clip | None:
        path, segment = payload
        try:
            if segment is None:
                audio = load_audio(path)  # (N,) float32 mono 16 kHz
            else:
                audio = load_segment(path, segment, self.segment_s)  # type: ignore[arg-type]
        except InvalidAudioError as exc:
            if key not in self._warned:  # once per file and worker, not once per pass
                self._warned.add(key)
                logger.warning("skipping %s", exc)
            return None
        return self._whole_clip(log_mel(torch.from_numpy(audio))[0, 0], gen)  # (T, 80)

    def _counts_unread(self, payload: tuple[Path, int | None]) -> bool:
        try:
            return sf.info(str(payload[0])).frames > 0
        except Exception:
            return False


def _tar_paths(source: str) -> list[Path] | None:
    """Shard paths when ``source`` is a ``.tar``, a glob or a folder of them (no manifest)."""
    path = Path(source)
    if path.is_dir():
        tars = sorted(path.glob("*.tar"))
        has_audio = any(p.suffix.lower() in AUDIO_EXTENSIONS for p in path.iterdir())
        return tars if tars and not has_audio else None
    if source.endswith(".tar"):
        return sorted(Path(p) for p in glob.glob(source)) or None
    return None


def make_pretraining_dataset(
    source: str | Path | Sequence[str | Path], samples_per_epoch: int | None = None, **kwargs: Any
) -> CropDataset:
    """Pick the dataset for ``source``.

    * a folder with ``manifest.json`` (or node parts) -> :class:`ShardDataset` of its shards;
    * a ``.tar``, a glob of ``.tar`` files, or a folder of ``.tar`` files -> :class:`ShardDataset`;
    * anything else (audio folder, glob, ``.txt`` list, or a list of those) ->
      :class:`FolderDataset`.

    ``kwargs`` go to the dataset (rank, world_size, seed, shuffle_buffer, crops_per_clip, ...).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir() and ((path / MANIFEST).is_file() or any(path.glob("manifest-r*.json"))):
            return ShardDataset.from_dir(path, samples_per_epoch, **kwargs)
        tars = _tar_paths(str(source))
        if tars:
            return ShardDataset(tars, samples_per_epoch, **kwargs)
        sources: list[str | Path] = [source]
    else:
        sources = list(source)
    files = find_audio_files(sources)
    if not files:
        raise FileNotFoundError(f"no shards, manifest or audio files found in {source}")
    return FolderDataset(files, samples_per_epoch, **kwargs)


class _Batches(IterableDataset):
    """A :class:`CropDataset`'s batches, built inside each DataLoader worker (see make_loader)."""

    def __init__(self, dataset: CropDataset, batch_size: int, drop_last: bool) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.drop_last = dataset, batch_size, drop_last

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.dataset.iter_batches(self.batch_size, worker_id, num_workers, self.drop_last)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


def make_loader(
    dataset: IterableDataset,
    batch_size: int,
    *,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
    prefetch_factor: int = 4,
    persistent_workers: bool = True,
    drop_last: bool = False,
    worker_init_fn: Any = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` giving ``(batch, 1, 200, 80)`` float32 batches.

    A :class:`CropDataset` builds whole batches in its workers (:meth:`CropDataset.iter_batches`:
    the batches the DataLoader would have collated, in the same order); any other dataset (the
    fine-tuning crops) is batched by the DataLoader. ``num_workers`` defaults to
    ``min(8, cpu count)`` (one worker gives several thousand crops/s from version-2 shards, see
    ``docs/SCALE.md``). ``pin_memory`` defaults to ``cuda.is_available()`` (faster, asynchronous
    host-to-GPU copies). ``prefetch_factor`` 4 batches per worker hides shard-read hiccups.
    Persistent workers keep open shards and skip a fork per epoch; call ``dataset.set_epoch(e)``
    before each ``iter(loader)``. Also sets ``dataset.batch_size``, which the resume mapping
    needs. ``worker_init_fn`` runs in each worker before it reads (the trainer uses it to leave
    SIGTERM / SIGINT to the main process).
    """
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    dataset.batch_size = batch_size
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"prefetch_factor": prefetch_factor, "persistent_workers": persistent_workers}
    if isinstance(dataset, CropDataset):
        source: IterableDataset = _Batches(dataset, batch_size, drop_last)
        batching: dict[str, Any] = {"batch_size": None}
    else:
        source, batching = dataset, {"batch_size": batch_size, "drop_last": drop_last}
    return DataLoader(
        source,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=worker_init_fn,
        **batching,
        **extra,
    )
