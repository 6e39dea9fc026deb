"""Atomic file writes: readers (and a resumed job) never see half a file.

Each write goes to a uniquely named temporary file in the target's folder, is flushed to disk,
and replaces the target with ``os.replace`` (atomic on POSIX); concurrent writers of the same
file cannot collide on the temporary name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed."""
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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any, indent: int = 1, sort_keys: bool = False) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n").encode())
