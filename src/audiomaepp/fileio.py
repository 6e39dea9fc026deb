"""Atomic file writes: readers (and a resumed job) never see half a file. Strict JSON.

Each write goes to a uniquely named temporary file in the target's folder, is flushed to disk,
and replaces the target with ``os.replace`` (atomic on POSIX); concurrent writers of the same
file cannot collide on the temporary name. :func:`json_safe` makes report data strict JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``: it replaces ``path`` on success, is removed on error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries to disk, so a rename into it survives a power cut (POSIX)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not openable (e.g. some network file systems): the rename is all we have
        return
    try:
        os.fsync(fd)
    except OSError:  # fsync on a directory is not supported everywhere
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` as a whole.

    Readers see the old folder or the complete new one, never a mix (two files written one after
    the other could pair new weights with an old config). An existing ``path`` is moved aside,
    the new folder renamed into place, then the old one deleted.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        old = path.with_name(f".{path.name}.old") if path.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any, indent: int = 1, sort_keys: bool = False) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n").encode())


def json_safe(obj: Any) -> Any:
    """``obj`` as strict JSON data: NaN / infinity -> ``null`` (JSON has no NaN), paths -> text,
    tuples -> lists, keys -> text; containers recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
