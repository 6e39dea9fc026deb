"""Shard layout shared by ``prepare`` (writer) and the loader (reader).

A shard is a plain webdataset tar. Format version 2, the one written::

    KEY.npy                   the unnormalised log-mel (T, 80) float16, time first (a plain .npy)
    KEY.json                  source path, frames, duration, and the whole clip's mean / std
    ...                       (one pair per clip)
    __audiomaepp_index_v2__   the last member: one row per clip, a .npy structured array of
                              (key, where the clip's float16 data starts in the tar, frames,
                              mean, population std); webdataset skips ``__...__`` members

The loader reads a shard's index once per pass and then, for each crop, only the crop's 200 frames
(one ``pread`` at a known offset: no tar header, no ``.npy`` parse, no whole-clip work). The
statistics and the finiteness check are done once, by the writer. ``SHARD_DIR`` also holds
``manifest.json`` (or one ``manifest-rNN.json`` per node of a split run): the format version, the
shards with their clip counts and the place of each index, and every skipped input file.

Version 1 (before the index) had the same ``.npy`` / ``.json`` pairs without statistics; it is
still read, the slow way (each member parsed, checked and standardised whole). A manifest or
shard of a newer version than :data:`FORMAT_VERSION` is refused with :class:`ShardFormatError`.

Names::

    single node : shard-000000.tar ...      manifest.json      progress.jsonl
    node r of N : shard-r00-000000.tar ...  manifest-r00.json  progress-r00.jsonl
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch

from ..errors import ShardFormatError
from ..fileio import atomic_write_json
from ..frontend import FrontendConfig, clip_stats

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DEFAULT_SEGMENT_S",
    "MANIFEST",
    "N_MELS",
    "INDEX_MEMBER",
    "MemberRef",
    "ClipRef",
    "ShardLayout",
    "ShardWriter",
    "OpenShards",
    "rank_tag",
    "shard_name",
    "manifest_name",
    "progress_name",
    "write_json_atomic",
    "iter_clip_members",
    "scan_shard",
    "read_index",
    "whole_clip_stats",
    "decode_npy",
    "load_manifest",
    "merge_manifests",
    "manifest_shards",
]

FORMAT = "audiomaepp-logmel-shards"
# Files longer than this are cut into segments of this length (the last one shorter), each its own
# clip with its own statistics, by ``prepare`` and by the folder loader alike: one 2-s crop of a
# 10-h file per epoch would waste it, and a segment bounds memory. 30 s keeps 10-s clips whole.
DEFAULT_SEGMENT_S = 30.0
FORMAT_VERSION = 2  # the newest layout: what the writer writes and the newest the loader reads
MANIFEST = "manifest.json"
N_MELS = FrontendConfig().n_mels  # a stored clip is (T, n_mels) float16
ROW_BYTES = N_MELS * 2  # one float16 frame
INDEX_MEMBER = f"__audiomaepp_index_v{FORMAT_VERSION}__"
_INDEX_NAME = re.compile(r"__audiomaepp_index_v(\d+)__")
_INDEX_FIELDS = [("offset", "<u8"), ("frames", "<u4"), ("mean", "<f4"), ("std", "<f4")]


def rank_tag(node_rank: int, num_nodes: int) -> str:
    """``""`` for a single-node run, else ``"-r07"`` (zero-padded to at least two digits)."""
    if num_nodes <= 1:
        return ""
    width = max(2, len(str(num_nodes - 1)))
    return f"-r{node_rank:0{width}d}"


def shard_name(index: int, node_rank: int = 0, num_nodes: int = 1) -> str:
    """``shard-000003.tar`` or, for node 1 of a split run, ``shard-r01-000003.tar``."""
    return f"shard{rank_tag(node_rank, num_nodes)}-{index:06d}.tar"


def manifest_name(node_rank: int = 0, num_nodes: int = 1) -> str:
    """``manifest.json`` for a single node, ``manifest-r01.json`` for one node's part."""
    return MANIFEST if num_nodes <= 1 else f"manifest{rank_tag(node_rank, num_nodes)}.json"


def progress_name(node_rank: int = 0, num_nodes: int = 1) -> str:
    """Append-only log of finished shards, one JSON object a line (first line: the fingerprint)."""
    return f"progress{rank_tag(node_rank, num_nodes)}.jsonl"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary name and ``os.replace`` so readers never see half a file."""
    atomic_write_json(path, obj)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    """Bytes of one ``.npy`` member -> the array (no pickles are ever loaded)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def whole_clip_stats(lms: torch.Tensor) -> tuple[float, float]:
    """Mean and population std of a whole clip ``(T, 80)``, as the float32 values applied to crops.

    Computed exactly as ``standardize`` computes them (float32 values, ``clip_stats``), by the
    writer for version 2 and by the loader for clips it holds whole, so every path standardises
    alike. Single-threaded: an 80 000-element reduction is too small for a thread pool, and on a
    loaded host the pool's threads wait on each other (measured 20-80 ms instead of 60 us).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mean, std = clip_stats(lms.float(), unbiased=False)
    finally:
        torch.set_num_threads(threads)
    return float(mean), float(std)


class ShardWriter:
    """Write one shard under ``NAME.tmp`` and rename it to ``NAME`` on :meth:`commit`.

    The rename is atomic, so a shard with its final name is always complete; a crash leaves only a
    ``.tmp`` file, which ``prepare`` deletes and redoes. Tar headers carry no time stamps or owners,
    so the same clips always give the same bytes. After :meth:`commit`, ``index`` is the index
    member's ``(offset, size)`` for the manifest.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self._file: BinaryIO = open(self.tmp_path, "wb")  # closed in commit() or abort()
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)
        self._rows: list[tuple[bytes, int, int, float, float]] = []
        self.index: tuple[int, int] | None = None

    @property
    def clips(self) -> int:
        return len(self._rows)

    @property
    def size(self) -> int:
        """Bytes written so far (the tar end-of-archive blocks excluded)."""
        return self._tar.offset

    def _add(self, name: str, data: bytes) -> int:
        """Append a member; returns the offset of its data in the tar."""
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0  # no time stamps: identical inputs give identical shards
        self._tar.addfile(info, io.BytesIO(data))
        return self._tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE

    def add(self, key: str, lms: np.ndarray, meta: dict[str, Any]) -> None:
        """Append one clip: ``lms`` ``(T >= 1, 80)`` finite, stored as float16; ``meta`` as JSON.

        Raises ``ValueError`` for a bad key or clip: the loader trusts what the writer checked.
        """
        if "." in key or "/" in key or key.startswith("__"):
            raise ValueError(
                f"shard key {key!r} must not contain '.' or '/' (webdataset splits on them) "
                "nor start with '__' (webdataset's metadata)"
            )
        with np.errstate(over="ignore"):  # an overflow to inf is refused just below
            lms16 = np.ascontiguousarray(lms, dtype=np.float16)
        if lms16.ndim != 2 or lms16.shape[1] != N_MELS or lms16.shape[0] < 1:
            raise ValueError(f"clip {key}: shape {lms16.shape}, expected (frames >= 1, {N_MELS})")
        mean, std = whole_clip_stats(torch.from_numpy(lms16))
        if not (math.isfinite(mean) and math.isfinite(std)):  # any NaN / inf value makes them so
            raise ValueError(f"clip {key}: NaN or infinite values (in float16)")
        npy = _npy_bytes(lms16)
        start = self._add(f"{key}.npy", npy) + len(npy) - lms16.nbytes  # the float16 data
        self._add(f"{key}.json", json.dumps({**meta, "mean": mean, "std": std}).encode())
        self._rows.append((key.encode(), start, lms16.shape[0], mean, std))

    def _index_bytes(self) -> bytes:
        width = max([len(r[0]) for r in self._rows] + [1])
        index = np.array(self._rows, dtype=[("key", f"S{width}"), *_INDEX_FIELDS])
        return _npy_bytes(index)

    def commit(self) -> int:
        """Write the index, finish and flush the tar, give it its final name; returns its size."""
        data = self._index_bytes()
        self.index = (self._add(INDEX_MEMBER, data), len(data))
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        """Drop the unfinished shard."""
        self._tar.close()
        self._file.close()
        self.tmp_path.unlink(missing_ok=True)


class OpenShards:
    """Open shard files of one process, read with ``pread`` at an offset (no shared file position).

    Keeps at most ``capacity`` open (a worker reads ``interleave`` shards at a time; the others are
    closed, oldest first). Not shared between processes.
    """

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._fds: dict[str, int] = {}

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= self.capacity:
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def read(self, path: str, offset: int, size: int) -> bytearray:
        """``size`` bytes at ``offset``; ``EOFError`` if the file ends first (a truncated shard)."""
        buf = bytearray(size)
        got = os.preadv(self._fd(path), [buf], offset)
        if got != size:
            raise EOFError(f"{path}: {size} bytes wanted at offset {offset}, file ends after {got}")
        return buf

    def file_size(self, path: str) -> int:
        return os.fstat(self._fd(path)).st_size

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


@dataclass(frozen=True)
class MemberRef:
    """Where one clip's ``.npy`` bytes live in a version-1 shard (the loader parses them).

    The loader's shuffle buffer holds these, so a large buffer costs almost no memory and clips
    that a resumed run skips are never read.
    """

    shard: str
    offset: int
    size: int

    def read(self, files: OpenShards | None = None) -> bytes:
        """The member's bytes, through ``files`` when given."""
        if files is None:
            with open(self.shard, "rb") as f:
                f.seek(self.offset)
                return f.read(self.size)
        return bytes(files.read(self.shard, self.offset, self.size))


class ClipRef(NamedTuple):
    """One clip of a version-2 shard: where its float16 frames start, how many, its statistics."""

    shard: str
    offset: int  # of frame 0 of the (T, 80) float16 data in the shard file
    frames: int
    mean: float  # whole-clip mean and population std (float32 values)
    std: float

    def read_frames(self, files: OpenShards, start: int, count: int) -> torch.Tensor:
        """Frames ``start .. start + count`` as a ``(count, 80)`` float16 tensor (one ``pread``)."""
        data = files.read(self.shard, self.offset + start * ROW_BYTES, count * ROW_BYTES)
        return torch.frombuffer(data, dtype=torch.float16).view(count, N_MELS)


@dataclass(frozen=True)
class ShardLayout:
    """How to read one shard: its format version, clip count and (version 2) index member."""

    version: int
    clips: int
    index: tuple[int, int] | None = None  # (offset, size) of the index member's data


def _index_version(name: str) -> int | None:
    match = _INDEX_NAME.fullmatch(name.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def _check_version(version: int, what: str) -> None:
    if not isinstance(version, int) or version < 1:
        raise ShardFormatError(f"{what}: invalid shard format version {version!r}")
    if version > FORMAT_VERSION:
        raise ShardFormatError(
            f"{what}: shard format version {version} is newer than this audiomaepp reads "
            f"(versions 1 to {FORMAT_VERSION}); upgrade audiomaepp to read these shards"
        )


def iter_clip_members(shard: str | Path) -> Iterator[tuple[str, MemberRef]]:
    """``(key, MemberRef)`` of every ``.npy`` member of ``shard``, in file order.

    Reads only the 512-byte tar headers (``tarfile`` seeks over the data in ``r:`` mode).
    """
    with tarfile.open(shard, mode="r:") as tar:
        while (member := tar.next()) is not None:
            tar.members.clear()  # tarfile keeps every header it read; we need none of them
            if member.isfile() and member.name.endswith(".npy"):
                key = member.name.rsplit("/", 1)[-1].split(".", 1)[0]
                yield key, MemberRef(str(shard), member.offset_data, member.size)


def scan_shard(shard: str | Path) -> ShardLayout:
    """The shard's layout from its tar headers (for shards given without a manifest).

    Raises :class:`ShardFormatError` for a newer format, ``tarfile.ReadError`` / ``OSError`` for
    an unreadable file.
    """
    clips, index = 0, None
    with tarfile.open(shard, mode="r:") as tar:
        while (member := tar.next()) is not None:
            tar.members.clear()
            version = _index_version(member.name)
            if version is not None:
                _check_version(version, str(shard))
                index = (version, member.offset_data, member.size)
            elif member.isfile() and member.name.endswith(".npy"):
                clips += 1
    if index is None:
        return ShardLayout(1, clips)
    return ShardLayout(index[0], clips, (index[1], index[2]))


def read_index(
    shard: str, index: tuple[int, int], files: OpenShards
) -> Iterator[tuple[str, ClipRef]]:
    """``(key, ClipRef)`` of every clip of a version-2 shard, in file order.

    The index is checked before anything is yielded (fields, frames >= 1, data inside the file,
    finite statistics); a broken one raises ``ValueError`` naming the shard.
    """
    offset, size = index
    try:
        rows = decode_npy(bytes(files.read(shard, offset, size)))
    except (ValueError, EOFError, OSError) as exc:
        raise ValueError(f"{shard}: unreadable clip index ({type(exc).__name__}: {exc})") from exc
    names = rows.dtype.names or ()
    if rows.ndim != 1 or not {"key", *(f for f, _ in _INDEX_FIELDS)} <= set(names):
        raise ValueError(f"{shard}: clip index has fields {names}, shape {rows.shape}")
    end = rows["offset"].astype(np.int64) + rows["frames"].astype(np.int64) * ROW_BYTES
    bad = (
        (rows["frames"] < 1)
        | (end > files.file_size(shard))
        | ~np.isfinite(rows["mean"])
        | ~(rows["std"] >= 0)
    )
    if bad.any():
        raise ValueError(f"{shard}: clip index row {int(np.argmax(bad))} is inconsistent")
    cols = zip(*(rows[f].tolist() for f in ("key", "offset", "frames", "mean", "std")), strict=True)
    for key, start, frames, mean, std in cols:
        yield key.decode(), ClipRef(shard, start, frames, mean, std)


def _read_json(path: Path) -> dict[str, Any]:
    obj = json.loads(path.read_text())
    if obj.get("format") != FORMAT:
        raise ValueError(f"{path}: not an audiomaepp shard manifest (format {obj.get('format')!r})")
    _check_version(obj.get("version"), str(path))
    return obj


def _part_paths(shard_dir: Path) -> list[Path]:
    return sorted(shard_dir.glob("manifest-r*.json"))


def merge_manifests(shard_dir: str | Path, write: bool = True) -> dict[str, Any]:
    """Combine the per-node ``manifest-rNN.json`` parts of a split run into one manifest.

    Raises ``ValueError`` naming the missing node ranks when some part is absent (a node has not
    finished yet). With ``write`` the result is saved as ``SHARD_DIR/manifest.json``.
    """
    shard_dir = Path(shard_dir)
    parts = [_read_json(p) for p in _part_paths(shard_dir)]
    if not parts:
        raise FileNotFoundError(f"{shard_dir}: no manifest-r*.json parts to merge")
    num_nodes = parts[0]["num_nodes"]
    have = {p["node_rank"] for p in parts if p["num_nodes"] == num_nodes}
    missing = sorted(set(range(num_nodes)) - have)
    if missing or len(parts) != num_nodes:
        raise ValueError(
            f"{shard_dir}: cannot merge: expected parts of {num_nodes} nodes, missing node ranks "
            f"{missing} (or parts of runs with another --num-nodes are present)"
        )
    parts.sort(key=lambda p: p["node_rank"])
    configs = {
        json.dumps(
            {"version": p["version"], **{k: v for k, v in p["config"].items() if k != "inputs"}},
            sort_keys=True,
        )
        for p in parts
    }
    if len(configs) > 1:
        raise ValueError(
            f"{shard_dir}: the node parts were made with different settings or format versions; "
            "rerun them alike"
        )
    merged = {
        "format": FORMAT,
        "version": parts[0]["version"],
        "num_nodes": num_nodes,
        "node_rank": None,
        "config": parts[0]["config"],
        "files": sum(p["files"] for p in parts),
        "clips": sum(p["clips"] for p in parts),
        "frames": sum(p["frames"] for p in parts),
        "hours": sum(p["hours"] for p in parts),
        "shards": [s for p in parts for s in p["shards"]],
        "skipped": [s for p in parts for s in p["skipped"]],
        "segmented": [s for p in parts for s in p.get("segmented", [])],
        "parts": [manifest_name(p["node_rank"], num_nodes) for p in parts],
    }
    if write:
        write_json_atomic(shard_dir / MANIFEST, merged)
    return merged


def load_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """``SHARD_DIR/manifest.json``, or the merge of the node parts when it has not been written.

    Raises :class:`ShardFormatError` for a manifest of a newer format than this code reads.
    """
    shard_dir = Path(shard_dir)
    path = shard_dir / MANIFEST
    if path.is_file():
        return _read_json(path)
    if _part_paths(shard_dir):
        return merge_manifests(shard_dir, write=False)
    raise FileNotFoundError(f"{shard_dir}: no {MANIFEST} and no manifest-r*.json parts")


def manifest_shards(
    shard_dir: str | Path, manifest: dict[str, Any]
) -> tuple[list[Path], list[ShardLayout]]:
    """Absolute shard paths and their layouts; raises if a listed shard is missing."""
    shard_dir = Path(shard_dir)
    paths = [shard_dir / s["name"] for s in manifest["shards"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{shard_dir}: shards listed in the manifest are missing: {missing[:5]}"
        )
    version = int(manifest["version"])
    layouts = []
    for s in manifest["shards"]:
        index = tuple(s["index"]) if version >= 2 else None
        layouts.append(ShardLayout(version, int(s["clips"]), index))  # type: ignore[arg-type]
    return paths, layouts
