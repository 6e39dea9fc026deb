"""Scene embeddings of one task split, computed once and cached on disk.

Layout: ``<cache_dir>/<slug(embedder.cache_key)>/<slug(task name)>/<split>.npy`` (float32
``(n, d)``, rows in ``Task.files(split)`` order) next to ``<split>.json`` (cache key, task, split,
shape, what ran (precision, backend) and a fingerprint of the split's audio files: names, sizes,
modification times). A cache entry is used only when key and fingerprint match, so edited audio,
another model or another precision (the key names it: ``...-bfloat16``) re-embeds.

Embeddings are computed by the one embedding loop, :func:`audiomaepp.embedding.embed_files`
(decoding, optionally in worker processes, and batched encoding). Every listed file must load: a
task with a missing example is not comparable across models, so a file that fails to decode stops
the evaluation with an error naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..embedding.files import embed_files
from ..errors import InvalidAudioError
from ..fileio import atomic_path, atomic_write_json
from .embedders import ClipEmbedder, EmbedderError
from .tasks import Task

__all__ = ["cache_slug", "split_fingerprint", "embed_split"]

log = logging.getLogger(__name__)


def cache_slug(key: str, max_len: int = 60) -> str:
    """File-system-safe, collision-resistant folder name for a cache key or task name."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in key)[:max_len]
    return f"{safe}-{hashlib.sha1(key.encode('utf-8')).hexdigest()[:10]}"


def split_fingerprint(task: Task, split: str) -> str:
    """SHA-1 over (file name, size, mtime) of every audio file of ``split``, in row order."""
    h = hashlib.sha1()
    for f in task.files(split):
        st = task.audio_path(split, f).stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _paths(cache_dir: Path, embedder: ClipEmbedder, task: Task, split: str) -> tuple[Path, Path]:
    folder = Path(cache_dir) / cache_slug(embedder.cache_key) / cache_slug(task.name)
    return folder / f"{split}.npy", folder / f"{split}.json"


def _load(
    npy: Path, meta_path: Path, key: str, fingerprint: str, n: int, dim: int | None
) -> np.ndarray | None:
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("cache_key") != key or meta.get("fingerprint") != fingerprint:
            return None
        emb = np.load(npy)
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable embedding cache %s (%s)", npy, exc)
        return None
    fits = (
        emb.ndim == 2 and len(emb) == n and emb.dtype == np.float32 and dim in (None, emb.shape[1])
    )
    return emb if fits else None


def _save(emb: np.ndarray, npy: Path, meta_path: Path, meta: dict) -> None:
    """Write both files through temporary names so an interrupted run leaves no half entry."""
    npy.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(npy) as tmp, open(tmp, "wb") as f:
        np.save(f, emb)
    atomic_write_json(meta_path, meta)


def _compute(
    embedder: ClipEmbedder, task: Task, split: str, workers: int, progress: bool
) -> np.ndarray:
    """Decode and embed the split -> ``(n, d)`` float32, rows in ``task.files(split)`` order."""
    files = task.files(split)
    rows: list[np.ndarray] = []
    bar = tqdm(
        total=len(files),
        desc=f"embed {embedder.name} / {task.name} / {split}",
        unit="clip",
        disable=not progress,
        leave=False,
    )
    paths = [task.audio_path(split, f) for f in files]
    for item in embed_files(
        embedder, paths, workers=workers, on_decoded=lambda _row: bar.update(1)
    ):
        if item.embedding is None:
            raise InvalidAudioError(f"task {task.name}, split {split}: {item.error}")
        rows.append(item.embedding)
    bar.close()
    return _check_output(
        np.stack(rows) if rows else np.zeros((0, 0), np.float32), embedder, len(files)
    )


def _check_output(emb: np.ndarray, embedder: ClipEmbedder, n: int) -> np.ndarray:
    emb = np.asarray(emb)
    if emb.ndim != 2 or len(emb) != n:
        raise EmbedderError(
            f"embedder {embedder.name}: expected ({n}, d) embeddings, got {emb.shape}"
        )
    if not np.isfinite(emb).all():
        raise EmbedderError(f"embedder {embedder.name}: produced NaN or infinite embeddings")
    return emb.astype(np.float32, copy=False)


def embed_split(
    embedder: ClipEmbedder,
    task: Task,
    split: str,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Scene embeddings ``(n, d)`` float32 of ``split``, from the cache when it is valid.

    ``workers``: decoding processes (0: decode here; task clips are short, and starting a process
    costs about as much as decoding a few hundred of them)."""
    if cache_dir is None:
        return _compute(embedder, task, split, workers, progress)
    npy, meta_path = _paths(Path(cache_dir), embedder, task, split)
    fingerprint = split_fingerprint(task, split)
    n = len(task.files(split))
    emb = _load(
        npy,
        meta_path,
        embedder.cache_key,
        fingerprint,
        n,
        getattr(embedder, "embedding_size", None),
    )
    if emb is not None:
        log.debug("embedding cache hit %s", npy)
        return emb
    emb = _compute(embedder, task, split, workers, progress)
    meta = {
        "cache_key": embedder.cache_key,
        "embedder": embedder.name,
        # what ran (precision, backend, ...); the precision is also part of the cache key
        **({"ran": embedder.describe()} if hasattr(embedder, "describe") else {}),
        "task": task.name,
        "task_dir": str(task.path.resolve()),
        "split": split,
        "shape": list(emb.shape),
        "fingerprint": fingerprint,
    }
    _save(emb, npy, meta_path, meta)
    return emb
