"""Faults during training: stop signals and non-finite losses.

* :class:`StopRequest` turns SIGTERM / SIGINT into a flag that the loop reads at the next step
  boundary (then it checkpoints and exits 0). A second SIGINT aborts at once. DataLoader workers
  forked while it is installed inherit a handler that ignores the signal, so a Ctrl-C or a
  SIGTERM sent to the whole process group does not kill them under the main process's feet.
* :class:`NonFiniteGuard` keeps, on the device, how many optimizer steps in a row had a
  non-finite gradient norm or loss; such steps are skipped (no update). Reading the counters
  needs a host sync, so it happens every step only where that is free (CPU, or where the skip
  itself already needs the host); otherwise at log steps, after an all-reduce so every rank
  takes the same decision.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import torch

from ..errors import NonFiniteLossError


class StopRequest:
    """Context manager: SIGTERM / SIGINT set :attr:`requested` instead of killing the process."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker inherited the handler: keep serving batches
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: give up on the clean stop
        self.requested, self.signum = True, signum
        name = signal.Signals(signum).name
        # os.write, not logging: a signal handler must not take the logging lock.
        os.write(2, f"\n{name} received: checkpointing at the next step boundary, then exiting\n".encode())


class NonFiniteGuard:
    """Device-side counters of skipped (non-finite) optimizer steps."""

    def __init__(self, device: torch.device, limit: int) -> None:
        self.limit = limit
        zeros = lambda: torch.zeros((), dtype=torch.int64, device=device)  # noqa: E731
        self.run = zeros()  # current streak of bad steps
        self.max_run = zeros()  # longest streak since the last check
        self.window = zeros()  # bad steps since the last check
        self.total = 0  # bad steps over the run (host, updated at checks)

    def update(self, bad: torch.Tensor) -> None:
        """Record one optimizer step; ``bad`` is a bool tensor (no host sync)."""
        self.run = torch.where(bad, self.run + 1, torch.zeros_like(self.run))
        self.max_run = torch.maximum(self.max_run, self.run)
        self.window = self.window + bad.long()

    def counters(self) -> torch.Tensor:
        """``(max_run, window)`` as one int64 tensor, for an all-reduce (MAX) before :meth:`check`."""
        return torch.stack([self.max_run, self.window])

    def check(self, max_run: int, window: int, step: int) -> str | None:
        """Reset the window; raise after ``limit`` bad steps in a row; return a warning or None."""
        self.max_run = self.run.clone()
        self.window = torch.zeros_like(self.window)
        self.total += window
        self.raise_if_exceeded(max_run, step)
        if window:
            return f"skipped {window} optimizer step(s) with a non-finite loss or gradient norm (up to step {step})"
        return None

    def raise_if_exceeded(self, run: int, step: int) -> None:
        """Raise :class:`NonFiniteLossError` when ``run`` bad steps in a row reach the limit."""
        if run >= self.limit:
            raise NonFiniteLossError(
                f"{run} consecutive optimizer steps up to step {step} had a non-finite loss or "
                f"gradient norm (limit --max-nonfinite {self.limit}); the model was not updated on "
                "them. Lower the learning rate, set --clip-grad, or use bf16/fp32, then resume from "
                "the last checkpoint."
            )

    def state(self) -> dict[str, int]:
        return {"run": int(self.run), "total": self.total + int(self.window)}

    def load(self, state: dict[str, int]) -> None:
        self.run.fill_(int(state.get("run", 0)))
        self.max_run = self.run.clone()
        self.total = int(state.get("total", 0))
