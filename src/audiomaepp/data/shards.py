"""Shard layout shared by ``prepare`` (writer) and the loader (reader).

A shard is a plain webdataset tar: for each clip ``KEY.npy`` (the unnormalised log-mel, ``(T, 80)``
float16, time first) followed by ``KEY.json`` (source path, frames, duration). ``SHARD_DIR`` also
holds ``manifest.json`` (or one ``manifest-rNN.json`` per node of a split run) listing the shards,
their clip counts and every skipped input file.

Names::

    single node : shard-000000.tar ...      manifest.json      progress.jsonl
    node r of N : shard-r00-000000.tar ...  manifest-r00.json  progress-r00.jsonl
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..fileio import atomic_write_json

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "MemberRef",
    "ShardWriter",
    "rank_tag",
    "shard_name",
    "manifest_name",
    "progress_name",
    "write_json_atomic",
    "iter_clip_members",
    "decode_npy",
    "count_clips",
    "load_manifest",
    "merge_manifests",
    "manifest_shards",
]

FORMAT = "audiomaepp-logmel-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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
    """Append-only log of finished shards, one JSON object per line (first line: the fingerprint)."""
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


class ShardWriter:
    """Write one shard under ``NAME.tmp`` and rename it to ``NAME`` on :meth:`commit`.

    The rename is atomic, so a shard with its final name is always complete; a crash leaves only a
    ``.tmp`` file, which ``prepare`` deletes and redoes. Tar headers carry no time stamps or owners,
    so the same clips always give the same bytes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self._file: BinaryIO = open(self.tmp_path, "wb")  # closed in commit() or abort()
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)
        self.clips = 0

    @property
    def size(self) -> int:
        """Bytes written so far (the tar end-of-archive blocks excluded)."""
        return self._tar.offset

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0  # no time stamps: identical inputs give identical shards
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, key: str, lms: np.ndarray, meta: dict[str, Any]) -> None:
        """Append one clip: ``lms`` ``(T, 80)`` is stored as float16, ``meta`` as JSON."""
        if "." in key or "/" in key:
            raise ValueError(
                f"shard key {key!r} must not contain '.' or '/' (webdataset splits on them)"
            )
        self._add(f"{key}.npy", _npy_bytes(np.ascontiguousarray(lms, dtype=np.float16)))
        self._add(f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        self.clips += 1

    def commit(self) -> int:
        """Finish the tar, flush it to disk, rename it to its final name; returns its size."""
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


@dataclass(frozen=True)
class MemberRef:
    """Where one clip's ``.npy`` bytes live: a few dozen bytes instead of the clip itself.

    The loader's shuffle buffer holds these, so a large buffer costs almost no memory and clips
    that a resumed run skips are never read.
    """

    shard: str
    offset: int
    size: int

    def read(self, handles: dict[str, BinaryIO] | None = None) -> bytes:
        """Read the member's bytes, reusing an open handle from ``handles`` when given."""
        if handles is None:
            with open(self.shard, "rb") as f:
                f.seek(self.offset)
                return f.read(self.size)
        f = handles.get(self.shard)
        if f is None:
            if len(handles) >= 8:  # a worker reads a few shards at a time; keep the rest closed
                handles.pop(next(iter(handles))).close()
            f = handles[self.shard] = open(self.shard, "rb")
        f.seek(self.offset)
        return f.read(self.size)


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


def count_clips(shard: str | Path) -> int:
    """Number of clips in a shard, from its headers (used when there is no manifest)."""
    return sum(1 for _ in iter_clip_members(shard))


def _read_json(path: Path) -> dict[str, Any]:
    obj = json.loads(path.read_text())
    if obj.get("format") != FORMAT:
        raise ValueError(f"{path}: not an audiomaepp shard manifest (format {obj.get('format')!r})")
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
        json.dumps({k: v for k, v in p["config"].items() if k != "inputs"}, sort_keys=True)
        for p in parts
    }
    if len(configs) > 1:
        raise ValueError(
            f"{shard_dir}: the node parts were made with different settings; rerun them alike"
        )
    merged = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
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
    """``SHARD_DIR/manifest.json``, or the merge of the node parts when it has not been written."""
    shard_dir = Path(shard_dir)
    path = shard_dir / MANIFEST
    if path.is_file():
        return _read_json(path)
    if _part_paths(shard_dir):
        return merge_manifests(shard_dir, write=False)
    raise FileNotFoundError(f"{shard_dir}: no {MANIFEST} and no manifest-r*.json parts")


def manifest_shards(
    shard_dir: str | Path, manifest: dict[str, Any]
) -> tuple[list[Path], list[int]]:
    """Absolute shard paths and their clip counts; raises if a listed shard is missing."""
    shard_dir = Path(shard_dir)
    paths = [shard_dir / s["name"] for s in manifest["shards"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{shard_dir}: shards listed in the manifest are missing: {missing[:5]}"
        )
    return paths, [int(s["clips"]) for s in manifest["shards"]]
