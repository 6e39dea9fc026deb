"""Faults during training: stop signals (non-finite losses: see :mod:`.guard`).

* :class:`StopRequest` turns SIGTERM / SIGINT into a flag that the loop reads at the next step
  boundary (then it checkpoints and exits 0). A second SIGINT aborts at once. DataLoader workers
  forked while it is installed inherit a handler that ignores the signal, so a Ctrl-C or a
  SIGTERM sent to the whole process group does not kill them under the main process's feet.
  Requests nest: a job that runs several trainings (fine-tuning folds and seeds) holds its own
  :class:`StopRequest`, and a signal caught by the running training's request marks the job's
  too, so the job ends after that training has checkpointed instead of starting the next one.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from ..errors import NonFiniteLossError

__all__ = ["StopRequest", "NonFiniteLossError"]  # the error is raised by .guard


class StopRequest:
    """Context manager: SIGTERM / SIGINT set :attr:`requested` instead of killing the process."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopRequest:
        if (
            threading.current_thread() is threading.main_thread()
        ):  # handlers live in the main thread
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
        self._mark(signum)
        name = signal.Signals(signum).name
        # os.write, not logging: a signal handler must not take the logging lock.
        os.write(
            2,
            f"\n{name} received: checkpointing at the next step boundary, then exiting\n".encode(),
        )

    def _mark(self, signum: int) -> None:
        """Set this request and every enclosing one (whose handler this one replaced)."""
        self.requested, self.signum = True, signum
        outer = getattr(self._previous.get(signum), "__self__", None)
        if isinstance(outer, StopRequest) and outer is not self:
            outer._mark(signum)
