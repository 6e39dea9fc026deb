"""Per-file work over worker processes that survives bad files and dead workers.

A corpus job (decode a million files, write shards, embed a folder) must not stop for one file:
an exception in the work function fails that file only, and a worker killed by a signal (the
kernel's out-of-memory killer, a crash in a native decoder) never hangs the job. ``multiprocessing
.Pool.imap`` blocks forever when a worker dies; ``concurrent.futures.ProcessPoolExecutor`` at least
reports it (``BrokenProcessPool``) but fails every item in flight with it. :func:`imap_files`
builds on the latter: after a break it re-runs the items that were in flight one at a time in a
one-worker pool, so an innocent item succeeds and an item that kills its worker when it runs alone
is tried ``retries`` more times, then reported as :class:`WorkFailed`, while the rest goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["WorkFailed", "imap_files"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class WorkFailed:
    """The outcome of an item whose work raised or whose worker process died."""

    message: str

    def __str__(self) -> str:
        return self.message


def imap_files(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    *,
    retries: int = 1,
    initializer: Callable[[], None] | None = None,
    window: int | None = None,
    start_method: str = "spawn",
) -> Iterator[tuple[int, R | WorkFailed]]:
    """Yield ``(index, fn(item))`` for every item, in input order; failures as :class:`WorkFailed`.

    ``workers <= 1`` runs in this process (an exception still fails one item only; a signal that
    kills this process cannot be survived). Otherwise ``fn`` (module-level, picklable) runs in
    ``workers`` processes with at most ``window`` items submitted and not yet yielded (default
    ``4 * workers``: enough to keep every worker busy, few enough to bound buffered results).
    An item in flight when a worker died is re-run alone (a break of the shared pool cannot tell
    which item killed it), and again up to ``retries`` times while its solitary worker dies; if it
    dies every time it fails with a message that says so. ``spawn`` is the default start method:
    forking a parent that has used torch's thread pools can deadlock in the children.
    """
    items = list(items)
    if workers <= 1:
        for index, item in enumerate(items):
            yield index, _call(fn, item)
        return
    window = window or 4 * workers
    ctx = mp.get_context(start_method)

    def new_pool(size: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(size, mp_context=ctx, initializer=initializer)

    done: dict[int, Any] = {}  # finished, waiting for the items before them to be yielded
    in_flight: dict[Future, int] = {}
    next_submit = next_yield = 0
    pool = new_pool(min(workers, len(items)) or 1)
    try:
        while next_yield < len(items):
            while next_submit < len(items) and next_submit - next_yield < window:
                in_flight[pool.submit(_call, fn, items[next_submit])] = next_submit
                next_submit += 1
            finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            suspects = _collect(finished, in_flight, done)
            if suspects:  # the pool is broken: every future still in flight fails with it
                suspects += _collect(list(in_flight), in_flight, done)
                pool.shutdown(wait=False, cancel_futures=True)
                for index in sorted(suspects):
                    done[index] = _run_alone(fn, items[index], retries, new_pool)
                pool = new_pool(min(workers, len(items)))
            while next_yield in done:
                yield next_yield, done.pop(next_yield)
                next_yield += 1
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _call(fn: Callable[[T], R], item: T) -> R | WorkFailed:
    """``fn(item)``, with an exception turned into the item's failure (runs inside the worker)."""
    try:
        return fn(item)
    except Exception as exc:  # one bad item must not end the job: report it, go on
        return WorkFailed(f"{type(exc).__name__}: {exc}")


def _collect(
    futures: Iterable[Future], in_flight: dict[Future, int], done: dict[int, Any]
) -> list[int]:
    """Move futures' results into ``done``; return the indices lost to a broken pool.

    Blocks on unfinished futures: called with the finished ones, or after a break, when the
    executor has already failed everything still pending.
    """
    lost = []
    for future in futures:
        index = in_flight.pop(future)
        try:
            done[index] = future.result()
        except BrokenProcessPool:
            lost.append(index)
        except Exception as exc:  # e.g. a result that cannot be pickled back
            done[index] = WorkFailed(f"{type(exc).__name__}: {exc}")
    return lost


def _run_alone(
    fn: Callable[[T], R], item: T, retries: int, new_pool: Callable[[int], ProcessPoolExecutor]
) -> R | WorkFailed:
    """Re-run one item that was in flight when a worker died, alone, so a death is its own."""
    exit_codes = []
    for _ in range(1 + max(retries, 0)):
        pool = new_pool(1)
        try:
            future = pool.submit(_call, fn, item)
            try:
                return future.result()
            except BrokenProcessPool:
                exit_codes.append(_exit_code(pool))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    how = ", ".join(_describe_exit(code) for code in exit_codes)
    runs = f"{len(exit_codes)} run" + ("s" if len(exit_codes) > 1 else "")
    return WorkFailed(f"worker process died every time it ran this item alone ({runs}: {how})")


def _exit_code(pool: ProcessPoolExecutor) -> int | None:
    """The exit code of a one-worker pool's dead process, when the executor still knows it."""
    processes = getattr(pool, "_processes", None) or {}
    for process in processes.values():
        process.join(timeout=1.0)
        return process.exitcode
    return None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (often the kernel's out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"
