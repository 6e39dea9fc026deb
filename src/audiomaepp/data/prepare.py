"""``prepare``: audio files -> webdataset shards of float16 log-mels plus a manifest.

Pipeline: list the inputs (sorted) -> keep this node's files (``index % num_nodes == node_rank``)
-> put them in a permutation seeded by ``seed`` (so every shard mixes folders, classes and
sources instead of holding one directory) -> a process pool decodes each file (``load_audio``:
mono, 16 kHz) and computes the unnormalised log-mel of the whole clip (``log_mel``, ``(T, 80)``)
-> the parent writes the results in input order, filling a shard until it reaches
``shard_size_mb``, each clip with its whole-clip mean / std in the shard's index (see
:mod:`audiomaepp.data.shards`) -> ``manifest.json``.

Why each piece:

* Log-mels, not audio, are stored: the STFT of ~2 M clips per epoch would cost more CPU than the
  model step; float16 halves the size (log-mels span about [-16, 20], float16 keeps ~3 digits).
* Standardisation is *not* baked in, but its statistics are: the loader standardises each crop
  with its whole clip's stored mean and std, so it never touches more than the crop, and the
  stored log-mel still serves any other normalisation. Finiteness is checked here, once.
* Long files in bounded memory: a file longer than ``segment_s`` is decoded piece by piece and its
  segments' log-mels are written to a spool file (``.spool/`` in the output folder) as they are
  computed; the parent copies them into the shard one at a time. Neither process ever holds the
  whole file, so a 3-hour recording needs the memory of a 30-s one.
* Deterministic output: files are sorted, permuted with a fixed seed and written in that order,
  tar headers carry no time stamps, so a given input list and config always gives the same
  shards, whatever ``workers`` is.
* Resumable: a shard is written as ``NAME.tmp`` and renamed when complete, then recorded in
  ``progress.jsonl`` together with the range of input files it covers and the files skipped in
  that range. A re-run keeps every recorded shard whose size matches, deletes ``.tmp`` leftovers
  and continues after the last recorded file, so a half-written shard is simply redone.
* Bad inputs never stop the job: decode errors, empty, non-finite, digitally silent (all samples
  0) and too-short files are recorded in the manifest with their reason and skipped.
* Dead workers never hang it: the pool is :func:`audiomaepp.workers.imap_files`; a file whose
  worker was killed (out of memory, a crash in a native decoder) is retried alone once, and if
  its worker dies again it is recorded as skipped (``worker_failed``) while the job goes on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..audio import duration_s, find_audio_files, iter_pieces, load_audio
from ..errors import InvalidAudioError
from ..fileio import atomic_write_bytes
from ..frontend import SAMPLE_RATE, FrontendConfig, log_mel
from ..workers import WorkFailed, imap_files
from .shards import (
    DEFAULT_SEGMENT_S,
    FORMAT,
    FORMAT_VERSION,
    N_MELS,
    ShardWriter,
    manifest_name,
    merge_manifests,
    progress_name,
    rank_tag,
    shard_name,
    write_json_atomic,
)

__all__ = [
    "SKIP_REASONS",
    "PrepareConfig",
    "PrepareReport",
    "ClipResult",
    "SegmentSpool",
    "default_workers",
    "process_file",
    "clip_keys",
    "prepare_shards",
]

logger = logging.getLogger(__name__)

# Why a file can be skipped; the manifest's ``skipped[*].reason`` is one of these.
SKIP_REASONS = (
    "decode_error",
    "empty",
    "non_finite",
    "silent",
    "too_short",
    "error",
    "worker_failed",
)


def default_workers() -> int:
    """``min(8, cpu count)``: decode + STFT is CPU-bound; past ~8 the disk is usually the limit."""
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of one ``prepare`` run (node)."""

    # ~1 GB tars: 5 000 h of float16 log-mels (~290 GB) become ~300 shards, enough to give every
    # loader worker of a 64-GPU job its own shards while keeping the file count small.
    shard_size_mb: float = 1000.0
    # Parallel decode processes; <= 1 runs everything in the calling process (tests, debugging).
    workers: int = field(default_factory=default_workers)
    num_nodes: int = 1  # machines sharing the file list; each takes every num_nodes-th file
    node_rank: int = 0  # which of those machines this is (0-based)
    # Under 0.1 s (< 11 frames) a clip is mostly padding: tiled 20x to 2 s, it teaches nothing.
    min_duration_s: float = 0.1
    # Seeds the permutation that deals files to shards: sorted order would fill each shard from
    # one folder (one class or source), and the loader's batches would follow.
    seed: int = 0
    # Files longer than this are cut into segments of this length (the last one shorter): decoded
    # piece by piece (bounded memory) and stored as one member each, so the loader takes a crop
    # of every segment per epoch instead of one 2-s crop of a 10-h file. 30 s leaves the usual
    # 10-s clips whole. None stores every file whole (memory then grows with a file's length).
    segment_s: float | None = DEFAULT_SEGMENT_S

    def validate(self) -> None:
        """Raise ``ValueError`` on impossible settings, naming the option."""
        if self.shard_size_mb <= 0:
            raise ValueError(f"shard_size_mb must be > 0, got {self.shard_size_mb}")
        if self.num_nodes < 1 or not 0 <= self.node_rank < self.num_nodes:
            raise ValueError(
                f"need 0 <= node_rank < num_nodes, got {self.node_rank} of {self.num_nodes}"
            )
        if self.min_duration_s < 0:
            raise ValueError(f"min_duration_s must be >= 0, got {self.min_duration_s}")
        if self.segment_s is not None and self.segment_s < max(self.min_duration_s, 2.0):
            raise ValueError(f"segment_s must be >= 2 s (one model input), got {self.segment_s}")

    def output_config(self) -> dict[str, Any]:
        """The settings that change the shards' content (``workers`` does not)."""
        return {
            "shard_size_mb": self.shard_size_mb,
            "num_nodes": self.num_nodes,
            "min_duration_s": self.min_duration_s,
            "seed": self.seed,
            "segment_s": self.segment_s,
            "sample_rate": SAMPLE_RATE,
            "frontend": asdict(FrontendConfig()),
            "dtype": "float16",
            "layout": f"(T, {N_MELS}) time first, unnormalised log(mel + eps)",
        }


@dataclass(frozen=True)
class SegmentSpool:
    """A long file's usable segments, on disk: raw float16 ``(T_i, 80)`` arrays one after another.

    The worker appends each segment's log-mel as soon as it is computed; the parent reads them
    back one at a time (:meth:`read`) and then deletes the file (:meth:`remove`).
    """

    path: str
    # (segment index in the file: it starts at index * segment_s seconds, frames, samples at
    # 16 kHz) of each kept segment; silent, too-short and non-finite segments are left out
    segments: tuple[tuple[int, int, int], ...]

    def read(self) -> Iterator[tuple[int, np.ndarray, int]]:
        """``(index, log-mel (T_i, 80) float16, samples)`` of each segment, in order."""
        with open(self.path, "rb") as f:
            for index, frames, samples in self.segments:
                lms = np.fromfile(f, dtype=np.float16, count=frames * N_MELS)
                if lms.size != frames * N_MELS:
                    raise EOFError(f"{self.path}: spool ends inside segment {index}")
                yield index, lms.reshape(frames, N_MELS), samples

    def remove(self) -> None:
        Path(self.path).unlink(missing_ok=True)


@dataclass
class ClipResult:
    """What a worker sends back for one file: the log-mel, or why the file was skipped."""

    lms: np.ndarray | None  # (T, 80) float16; None when skipped or cut into segments
    samples: int  # samples at 16 kHz after decoding (0 when unknown)
    reason: str | None = None  # one of SKIP_REASONS when skipped
    detail: str | None = None  # the message, naming the file
    spool: SegmentSpool | None = None  # a long file's segments (written to disk as computed)


@dataclass
class PrepareReport:
    """Outcome of :func:`prepare_shards`: the manifest written and what this run actually did."""

    manifest: dict[str, Any]
    manifest_path: Path
    processed: int  # files decoded by this run (0 when everything was already done)
    reused_shards: int  # shards kept from an earlier run
    elapsed_s: float

    @property
    def files_per_s(self) -> float:
        return self.processed / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class _Job:
    path: str
    key: str
    relpath: str


# ---------------------------------------------------------------------------------------------
# One file
# ---------------------------------------------------------------------------------------------


def _skip(reason: str, detail: str, samples: int = 0) -> ClipResult:
    return ClipResult(None, samples, reason, detail)


def _classify(exc: InvalidAudioError) -> str:
    """The skip reason of an audio error: its typed ``reason`` (never its message's text)."""
    return exc.reason if exc.reason in SKIP_REASONS else "error"


class _Unusable(Exception):
    """Samples that decode but make no training clip; ``reason`` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _usable_logmel(audio: np.ndarray, min_duration_s: float, what: str) -> np.ndarray:
    """The log-mel ``(T, 80)`` float16 of ``audio`` (mono 16 kHz), or :class:`_Unusable`.

    The one set of checks for a whole file and for each segment of a long one: empty, non-finite,
    digitally silent (every sample 0), shorter than ``min_duration_s``, non-finite log-mel.
    """
    n = int(audio.shape[0])
    if n == 0:
        raise _Unusable("empty", f"{what}: empty audio (0 samples)")
    if not np.isfinite(audio).all():
        raise _Unusable("non_finite", f"{what}: contains NaN or infinite samples")
    if float(np.abs(audio).max()) == 0.0:
        raise _Unusable("silent", f"{what}: digital silence (every sample is 0)")
    if n < min_duration_s * SAMPLE_RATE:
        raise _Unusable("too_short", f"{what}: {n / SAMPLE_RATE:.3f} s is under {min_duration_s} s")
    lms = log_mel(torch.from_numpy(audio))[0, 0]  # (T, 80) float32
    if not bool(torch.isfinite(lms).all()):
        raise _Unusable("non_finite", f"{what}: log-mel has NaN or infinite values")
    return lms.numpy().astype(np.float16)


def process_file(
    path: str,
    min_duration_s: float = 0.1,
    segment_s: float | None = None,
    spool: str | None = None,
) -> ClipResult:
    """Decode one file and compute its log-mel ``(T, 80)`` float16, ``T = 1 + N // 160``.

    A file longer than ``segment_s`` seconds is decoded piece by piece and its segments are
    written to ``spool`` (a new temporary file when None) as they are computed (see
    :func:`_process_long`); the caller reads them through ``result.spool`` and removes the file.
    Never raises for a bad file: returns a :class:`ClipResult` with ``reason`` set instead.
    """
    if segment_s is not None:
        seconds = duration_s(path)
        if seconds is not None and seconds > segment_s:
            return _process_long(path, min_duration_s, segment_s, spool)
    try:
        audio = load_audio(path)  # (N,) float32 mono 16 kHz
    except InvalidAudioError as exc:
        return _skip(_classify(exc), str(exc))
    except Exception as exc:  # anything else libsndfile / soxr may throw: record, keep going
        return _skip("error", f"{path}: {type(exc).__name__}: {exc}")
    try:
        return ClipResult(_usable_logmel(audio, min_duration_s, path), int(audio.shape[0]))
    except _Unusable as bad:
        return _skip(bad.reason, bad.detail, int(audio.shape[0]))


def _process_long(
    path: str, min_duration_s: float, segment_s: float, spool: str | None
) -> ClipResult:
    """A long file as segments of ``segment_s``: one decoded piece in memory at a time.

    Each usable segment's float16 log-mel is appended to the spool file as soon as it is computed,
    so memory stays at one piece of audio and its STFT, whatever the file's length (holding the
    log-mels instead costs ~58 MB per hour, the whole file's samples and STFT ~1.2 GB per hour).
    Segments that are digitally silent, shorter than ``min_duration_s`` or non-finite are dropped;
    if none is left the file is skipped.
    """
    if spool is None:
        fd, spool = tempfile.mkstemp(suffix=".f16", prefix="audiomaepp-spool-")
        os.close(fd)
    kept, samples, dropped = [], 0, Counter()
    try:
        with open(spool, "wb") as out:
            for index, piece in enumerate(iter_pieces(path, segment_s)):
                samples += len(piece)
                try:
                    lms = _usable_logmel(piece, min_duration_s, f"{path} segment {index}")
                except _Unusable as bad:
                    dropped[bad.reason] += 1
                    continue
                out.write(lms.tobytes())
                kept.append((index, int(lms.shape[0]), int(len(piece))))
    except Exception as exc:  # libsndfile / soxr errors part-way: record the file, keep going
        Path(spool).unlink(missing_ok=True)
        return _skip("decode_error", f"{path}: cannot decode audio ({type(exc).__name__}: {exc})")
    if not kept:
        Path(spool).unlink(missing_ok=True)
        reason = dropped.most_common(1)[0][0] if dropped else "empty"
        return _skip(
            reason, f"{path}: no usable {segment_s:g}-s segment ({dict(dropped)})", samples
        )
    return ClipResult(None, samples, spool=SegmentSpool(spool, tuple(kept)))


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core already; intra-op threads would oversubscribe


def _results(jobs: Sequence[_Job], cfg: PrepareConfig, spool_dir: Path) -> Iterator[ClipResult]:
    """Results of ``process_file`` for ``jobs``, in input order (in worker processes when
    ``workers > 1``).

    A file whose worker died twice (or whose processing raised) becomes a ``worker_failed`` skip.
    A long file's segments go to ``spool_dir / KEY.f16`` (a retried file starts it afresh).
    """
    args = [
        (job.path, cfg.min_duration_s, cfg.segment_s, str(spool_dir / f"{job.key}.f16"))
        for job in jobs
    ]
    workers = cfg.workers if len(jobs) > 1 else 1
    threads = torch.get_num_threads()
    if workers <= 1:
        # Per-clip STFTs are too small for threads; on a busy host they spin and wait (measured
        # 3.5x slower with 2 threads than with 1 on 2 loaded cores).
        torch.set_num_threads(1)
    try:
        for index, result in imap_files(_process_star, args, workers, initializer=_init_worker):
            if isinstance(result, WorkFailed):
                yield _skip("worker_failed", f"{jobs[index].path}: {result}")
            else:
                yield result
    finally:
        torch.set_num_threads(threads)


def _process_star(args: tuple[str, float, float | None, str]) -> ClipResult:
    return process_file(*args)


# ---------------------------------------------------------------------------------------------
# Stable keys
# ---------------------------------------------------------------------------------------------


def _glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard: ``data/**/*.wav`` -> ``data``."""
    fixed = list(
        itertools.takewhile(lambda p: not any(ch in p for ch in "*?["), Path(pattern).parts)
    )
    return os.path.abspath(os.path.join(*fixed)) if fixed else os.path.abspath(".")


def _input_roots(inputs: Sequence[str | Path]) -> list[str]:
    """Folders the files were found under (folder inputs, fixed part of globs), longest first."""
    roots = set()
    for item in inputs:
        s = str(item)
        if Path(s).is_dir():
            roots.add(os.path.abspath(s))
        elif any(ch in s for ch in "*?["):
            roots.add(_glob_root(s))
    return sorted(roots, key=len, reverse=True)


def _under(path: str, root: str) -> bool:
    return path.startswith(root.rstrip(os.sep) + os.sep)


def relative_names(files: Sequence[Path], inputs: Sequence[str | Path]) -> list[str]:
    """Each file's path relative to the input folder (or glob root) it was found under.

    Files from ``.txt`` lists or given one by one are made relative to their common folder.
    """
    roots = _input_roots(inputs)
    absolute = [os.path.abspath(f) for f in files]
    loose = [a for a in absolute if not any(_under(a, r) for r in roots)]
    base = os.path.commonpath([os.path.dirname(a) for a in loose]) if loose else ""
    names = []
    for a in absolute:
        root = next((r for r in roots if _under(a, r)), base)
        names.append(Path(os.path.relpath(a, root)).as_posix())
    return names


def _key(name: str) -> str:
    slug = re.sub(r"[^0-9A-Za-z_-]+", "_", name).strip("_")[-60:]
    return f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def clip_keys(relpaths: Sequence[str], abspaths: Sequence[str]) -> list[str]:
    """Stable sample keys: a readable slug of the relative path plus 10 hex digits of its SHA-1.

    Keys contain no ``.`` or ``/`` (webdataset splits on them). When two inputs share a relative
    path (same name under two input folders) both fall back to hashing their absolute path.
    """
    keys = [_key(r) for r in relpaths]
    dup = {k for k, c in Counter(keys).items() if c > 1}
    return [_key(a) if k in dup else k for k, a in zip(keys, abspaths, strict=True)]


def _jobs(inputs: Sequence[str | Path], cfg: PrepareConfig) -> list[_Job]:
    files = find_audio_files(list(inputs))
    if not files:
        raise ValueError(f"no audio files found in {[str(i) for i in inputs]}")
    rel = relative_names(files, inputs)
    absolute = [os.path.abspath(f) for f in files]
    keys = clip_keys(rel, absolute)
    mine = list(range(cfg.node_rank, len(files), cfg.num_nodes))  # index % num_nodes == node_rank
    random.Random(cfg.seed).shuffle(mine)  # deal files to shards in a seeded, mixed order
    return [_Job(absolute[i], keys[i], rel[i]) for i in mine]


# ---------------------------------------------------------------------------------------------
# Progress log (resume)
# ---------------------------------------------------------------------------------------------


def _fingerprint(cfg: PrepareConfig, jobs: Sequence[_Job]) -> str:
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, cfg.output_config()], sort_keys=True).encode())
    h.update(f"{cfg.node_rank}/{cfg.num_nodes}".encode())
    for job in jobs:
        h.update(f"\n{job.key}\t{job.path}".encode())
    return h.hexdigest()


def _read_progress(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Header and chunk records; a torn last line (crash while appending) is ignored."""
    if not path.is_file():
        return None, []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return (records[0], records[1:]) if records else (None, [])


def _valid_prefix(out: Path, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recorded chunks up to the first one whose shard is missing or has the wrong size."""
    kept, end = [], 0
    for c in chunks:
        shard = out / c["shard"] if c["shard"] else None
        if c["start"] != end or (
            shard and (not shard.is_file() or shard.stat().st_size != c["bytes"])
        ):
            break
        kept.append(c)
        end = c["end"]
    return kept


class _ProgressLog:
    """``progress.jsonl``: a header with the run's fingerprint, then one line per finished chunk."""

    def __init__(self, path: Path, fingerprint: str, files: int) -> None:
        self.path = path
        self.header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "files": files,
        }

    def resume(self, out: Path, overwrite: bool) -> list[dict[str, Any]]:
        """Chunks that can be kept; raises if ``out`` holds another run's progress."""
        header, chunks = _read_progress(self.path)
        if header is not None and header.get("fingerprint") != self.header["fingerprint"]:
            if not overwrite:
                version = header.get("version", 1)  # version-1 runs did not record it
                what = (
                    f"shards of format version {version} (this audiomaepp writes version "
                    f"{FORMAT_VERSION}; the loader still reads them)"
                    if version != FORMAT_VERSION
                    else "shards of a different input list or config"
                )
                raise ValueError(
                    f"{out} holds {what} ({self.path.name}); use another --out folder, or "
                    "--overwrite to replace this node's shards"
                )
            header, chunks = None, []
        kept = _valid_prefix(out, chunks) if header is not None else []
        lines = [self.header, *kept]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in lines).encode())
        return kept

    def append(self, chunk: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(chunk) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _clean_stale(out: Path, cfg: PrepareConfig, keep: set[str]) -> None:
    """Delete this node's ``.tmp`` leftovers, shards that no kept record lists, and its spool."""
    shutil.rmtree(_spool_dir(out, cfg), ignore_errors=True)
    pattern = re.compile(
        rf"shard{re.escape(rank_tag(cfg.node_rank, cfg.num_nodes))}-\d{{6}}\.tar(\.tmp)?"
    )
    for p in out.iterdir():
        if pattern.fullmatch(p.name) and p.name not in keep:
            logger.info("removing unfinished or stale shard %s", p)
            p.unlink()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _new_chunk(start: int) -> dict[str, Any]:
    return {
        "start": start,
        "end": start,
        "shard": None,
        "clips": 0,
        "frames": 0,
        "seconds": 0.0,
        "bytes": 0,
        "index": None,  # (offset, size) of the shard's clip index member
        "skipped": [],
        "segmented": [],
    }


class _Writer:
    """Routes results into chunks: a chunk is one shard plus the files skipped while filling it."""

    def __init__(
        self, out: Path, cfg: PrepareConfig, log: _ProgressLog, chunks: list[dict]
    ) -> None:
        self.out, self.cfg, self.log, self.chunks = out, cfg, log, chunks
        self.target = cfg.shard_size_mb * 1e6
        self.shards = sum(1 for c in chunks if c["shard"])
        self.chunk = _new_chunk(chunks[-1]["end"] if chunks else 0)
        self.shard: ShardWriter | None = None

    def add(self, index: int, job: _Job, result: ClipResult) -> None:
        c = self.chunk
        if result.reason is not None:
            c["skipped"].append(
                {"path": job.path, "reason": result.reason, "detail": result.detail}
            )
        elif result.spool is not None:
            self._add_segments(job, result.spool, result.samples)
        else:
            self._add_clip(job, result.lms, job.key, result.samples, {})
        c["end"] = index + 1
        if self.shard is not None and self.shard.size >= self.target:
            self.commit()

    def _add_segments(self, job: _Job, spool: SegmentSpool, samples: int) -> None:
        """One member per segment, keyed ``KEY_sNNNNN`` (N = the segment's index in the file).

        Read from the worker's spool file one segment at a time, which is then deleted.
        """
        step, count = self.cfg.segment_s, len(spool.segments)
        try:
            for i, lms, seg_samples in spool.read():
                extra = {"segment": i, "segments": count, "offset_s": i * step}
                self._add_clip(job, lms, f"{job.key}_s{i:05d}", seg_samples, extra)
        finally:
            spool.remove()
        self.chunk["segmented"].append(
            {"path": job.path, "segments": count, "seconds": samples / SAMPLE_RATE}
        )

    def _add_clip(
        self, job: _Job, lms: np.ndarray, key: str, samples: int, extra: dict[str, Any]
    ) -> None:
        if self.shard is None:
            name = shard_name(self.shards, self.cfg.node_rank, self.cfg.num_nodes)
            self.shard, self.chunk["shard"] = ShardWriter(self.out / name), name
        frames, seconds = int(lms.shape[0]), samples / SAMPLE_RATE
        meta = {
            "key": key,
            "source": job.path,
            "relpath": job.relpath,
            "frames": frames,
            "duration": seconds,
            "sample_rate": SAMPLE_RATE,
            **extra,
        }
        self.shard.add(key, lms, meta)
        self.chunk["clips"] += 1
        self.chunk["frames"] += frames
        self.chunk["seconds"] += seconds

    def commit(self) -> None:
        """Close the shard (atomic rename), then record the chunk; a crash in between redoes it."""
        c = self.chunk
        if c["end"] == c["start"]:
            return
        if self.shard is not None:
            c["bytes"] = self.shard.commit()
            c["index"] = self.shard.index
            self.shards += 1
        self.log.append(c)
        self.chunks.append(c)
        self.chunk, self.shard = _new_chunk(c["end"]), None

    def abort(self) -> None:
        if self.shard is not None:
            self.shard.abort()


def _process_all(jobs: list[_Job], writer: _Writer, cfg: PrepareConfig, progress: bool) -> int:
    start = writer.chunk["start"]
    bar = tqdm(
        total=len(jobs),
        initial=start,
        unit="file",
        desc="prepare",
        disable=not progress,
        dynamic_ncols=True,
        smoothing=0.05,
    )
    done = 0
    try:
        results = _results(jobs[start:], cfg, _spool_dir(writer.out, cfg))
        for index, result in zip(range(start, len(jobs)), results, strict=True):
            writer.add(index, jobs[index], result)
            done += 1
            bar.update(1)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return done


def _manifest(
    inputs: Sequence[str | Path], cfg: PrepareConfig, jobs: list[_Job], chunks: list[dict[str, Any]]
) -> dict[str, Any]:
    shards = [
        {
            "name": c["shard"],
            "clips": c["clips"],
            "frames": c["frames"],
            "bytes": c["bytes"],
            "hours": c["seconds"] / 3600,
            "index": c["index"],
        }
        for c in chunks
        if c["shard"]
    ]
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "num_nodes": cfg.num_nodes,
        "node_rank": cfg.node_rank,
        "config": {**cfg.output_config(), "inputs": [str(i) for i in inputs]},
        "files": len(jobs),
        "clips": sum(c["clips"] for c in chunks),
        "frames": sum(c["frames"] for c in chunks),
        "hours": sum(c["seconds"] for c in chunks) / 3600,
        "shards": shards,
        "skipped": [s for c in chunks for s in c["skipped"]],
        # long files stored as several segments: path, segment count, duration
        "segmented": [s for c in chunks for s in c.get("segmented", [])],
    }


def _spool_dir(out: Path, cfg: PrepareConfig) -> Path:
    """Where this node's workers put long files' segments until the parent has written them."""
    return out / f".spool{rank_tag(cfg.node_rank, cfg.num_nodes)}"


def _remove_node_outputs(out: Path, cfg: PrepareConfig) -> None:
    _clean_stale(out, cfg, keep=set())
    for name in (
        progress_name(cfg.node_rank, cfg.num_nodes),
        manifest_name(cfg.node_rank, cfg.num_nodes),
    ):
        (out / name).unlink(missing_ok=True)


def _log_summary(manifest: dict[str, Any], done: int, elapsed: float) -> None:
    reasons = Counter(s["reason"] for s in manifest["skipped"])
    logger.info(
        "%d clips (%.2f h) in %d shards; %d files skipped %s; decoded %d files in %.1f s",
        manifest["clips"],
        manifest["hours"],
        len(manifest["shards"]),
        len(manifest["skipped"]),
        dict(reasons),
        done,
        elapsed,
    )


def prepare_shards(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    config: PrepareConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Turn audio files into log-mel shards in ``out_dir`` (see the module docstring).

    ``inputs``: folders (recursive), globs or ``.txt`` lists. Re-running with the same inputs and
    config continues where a previous run stopped; a different input list or config in the same
    folder is refused unless ``overwrite`` (which deletes this node's shards first).
    Returns a :class:`PrepareReport`; the manifest is also written to ``out_dir``.
    """
    cfg = config or PrepareConfig()
    cfg.validate()
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(inputs, cfg)
    log = _ProgressLog(
        out / progress_name(cfg.node_rank, cfg.num_nodes), _fingerprint(cfg, jobs), len(jobs)
    )
    if overwrite and log.path.is_file() and _read_progress(log.path)[0] != log.header:
        _remove_node_outputs(out, cfg)
    chunks = log.resume(out, overwrite)
    _clean_stale(out, cfg, keep={c["shard"] for c in chunks if c["shard"]})
    reused = sum(1 for c in chunks if c["shard"])
    _spool_dir(out, cfg).mkdir(exist_ok=True)
    try:
        done = _process_all(jobs, _Writer(out, cfg, log, chunks), cfg, progress)
    finally:
        shutil.rmtree(_spool_dir(out, cfg), ignore_errors=True)
    manifest = _manifest(inputs, cfg, jobs, chunks)
    path = out / manifest_name(cfg.node_rank, cfg.num_nodes)
    write_json_atomic(path, manifest)
    if cfg.num_nodes > 1:
        _try_merge(out)
    elapsed = time.perf_counter() - t0
    _log_summary(manifest, done, elapsed)
    return PrepareReport(manifest, path, done, reused, elapsed)


def _try_merge(out: Path) -> None:
    """Write the merged ``manifest.json`` once every node's part is there (shared file systems)."""
    try:
        merge_manifests(out)
        logger.info("all node parts present: wrote %s", out / "manifest.json")
    except (ValueError, FileNotFoundError) as exc:
        logger.info(
            "not merging yet (%s); run `audiomaepp prepare --merge --out %s` "
            "when all nodes are done",
            exc,
            out,
        )
