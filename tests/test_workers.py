"""imap_files: order, per-item failures, and worker deaths that never hang the job."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from audiomaepp.workers import WorkFailed, imap_files


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is a bad file")
    return x


def die_on_five(x: int) -> int:
    """SIGKILL its own worker on item 5, every time (an out-of-memory kill, say)."""
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 100


def die_once(marker: str) -> str:
    """SIGKILL its own worker the first time it sees ``marker``; succeed on the retry."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died once")
        os.kill(os.getpid(), signal.SIGKILL)
    return "ok"


@pytest.fixture
def no_hang():
    """Turn a hang into a test failure (an alarm, not a speed assertion)."""

    def hung(signum, frame):
        raise AssertionError("imap_files hung")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("workers", [0, 2])
def test_results_in_input_order(workers, no_hang):
    out = list(imap_files(square, range(23), workers=workers, window=3))
    assert out == [(i, i * i) for i in range(23)]


@pytest.mark.parametrize("workers", [0, 2])
def test_exception_fails_only_its_item(workers, no_hang):
    out = dict(imap_files(fail_on_three, range(6), workers=workers))
    assert isinstance(out[3], WorkFailed) and "ValueError: three is a bad file" in str(out[3])
    assert {k: v for k, v in out.items() if k != 3} == {0: 0, 1: 1, 2: 2, 4: 4, 5: 5}


def test_sigkilled_worker_fails_its_item_and_the_rest_goes_on(no_hang):
    out = dict(imap_files(die_on_five, range(12), workers=2, window=6))
    assert isinstance(out[5], WorkFailed)
    assert "died every time it ran this item alone (2 runs" in str(out[5]) and "SIGKILL" in str(
        out[5]
    )
    # every bystander that was in flight with item 5 was re-run and kept its result
    assert {k: v for k, v in out.items() if k != 5} == {i: i + 100 for i in range(12) if i != 5}


def test_worker_killed_once_is_retried(tmp_path, no_hang):
    markers = [str(tmp_path / f"m{i}") for i in range(4)]
    out = dict(imap_files(die_once, markers, workers=2))
    assert out == {i: "ok" for i in range(4)}


def test_retries_bound_the_solitary_runs(no_hang):
    out = dict(imap_files(die_on_five, range(4, 7), workers=2, retries=0))
    assert isinstance(out[1], WorkFailed) and "(1 run: killed by SIGKILL" in str(out[1])
    assert out[0] == 104 and out[2] == 106
