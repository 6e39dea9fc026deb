"""The one non-finite-loss policy: decide, skip, count and stop, for every precision path.

A step is *bad* when its loss or global grad norm is NaN / inf. A bad step changes nothing: no
optimizer update, and AdamW's own step count does not advance. ``limit`` bad steps in a row stop
the run with :class:`NonFiniteLossError` (the model was not updated by them; resume from the last
checkpoint with a lower lr or clipping). Three precision paths skip in three ways:

* fp16: the grad scaler skips the update itself on inf/NaN gradients (and lowers its scale); an
  inf grad norm is its business (overflow), so the local loss decides what counts as bad;
* fused AdamW (bf16 / fp32 on GPUs): ``found_inf`` makes the kernel skip on the device;
* plain AdamW (CPU): the host must look at the flag to skip, so it checks every step anyway.

Counters live on the device. Reading them costs a host sync, so it happens every step only where
it is free (plain AdamW); otherwise at log steps, after a MAX all-reduce so every rank takes the
same decision. The grad norm is taken after DDP's all-reduce, so it is identical on every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..errors import NonFiniteLossError

logger = logging.getLogger(__name__)

__all__ = ["NonFiniteGuard", "NonFiniteLossError"]


class NonFiniteGuard:
    """Decides whether a step is bad, skips it, counts streaks and stops after ``limit``."""

    def __init__(
        self,
        device: torch.device,
        limit: int,
        *,
        scaler: torch.amp.GradScaler | None = None,
        fused: bool = False,
        distributed: bool = False,
    ) -> None:
        self.limit = limit
        self.scaled = scaler is not None and scaler.is_enabled()
        self.scaler, self.fused, self.distributed = scaler, fused, distributed
        # Plain AdamW cannot skip a step on the device, so the host looks at every step anyway
        # and reports bad ones at once; fused AdamW and the fp16 scaler skip on the device.
        self.sync_each_step = not (fused or self.scaled)
        zeros = lambda: torch.zeros((), dtype=torch.int64, device=device)  # noqa: E731
        self.run = zeros()  # current streak of bad steps
        self.max_run = zeros()  # longest streak since the last check
        self.window = zeros()  # bad steps since the last check
        self.total = 0  # bad steps over the run (host, updated at checks)

    # ---- one step --------------------------------------------------------------------------------
    def is_bad(self, loss: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        """Whether this step is non-finite (bool tensor, no host sync), the same on every rank.

        Distributed, the (all-reduced) grad norm alone decides: a NaN loss on any rank makes it
        NaN, while the local loss differs per rank. With fp16 the local loss decides and the
        counters are all-reduced before any use.
        """
        if self.scaled:
            return ~torch.isfinite(loss)
        bad = ~torch.isfinite(norm)
        return bad if self.distributed else bad | ~torch.isfinite(loss)

    def step(self, optimizer: torch.optim.Optimizer, bad: torch.Tensor) -> None:
        """The optimizer update, skipped on a bad step (on the device where possible); counts it."""
        if self.scaled:
            self.scaler.step(optimizer)  # skips on inf/NaN gradients itself
            self.scaler.update()
        elif self.fused:
            optimizer.found_inf = bad.float()  # fused AdamW skips the update (and its step count)
            optimizer.step()
            del optimizer.found_inf
        elif not bool(bad):  # host sync; plain AdamW has no device-side skip
            optimizer.step()
        self.run = torch.where(bad, self.run + 1, torch.zeros_like(self.run))
        self.max_run = torch.maximum(self.max_run, self.run)
        self.window = self.window + bad.long()

    def after_step(
        self, bad: torch.Tensor, loss: torch.Tensor, norm: torch.Tensor, step: int, report: bool
    ) -> None:
        """Per-step report and stop check, only where host reads are free (plain AdamW)."""
        if not self.sync_each_step or not bool(bad):
            return
        if report:
            logger.warning(
                "step %d: non-finite loss %s / grad norm %s: skipped the update",
                step,
                float(loss),
                float(norm),
            )
        self._raise_if_exceeded(int(self.run), step)

    # ---- log steps -------------------------------------------------------------------------------
    def at_log(
        self, step: int, reduce_max: Callable[[torch.Tensor], torch.Tensor], report: bool
    ) -> int:
        """Agree on the counters over ranks, reset the window, stop or warn; returns the bad steps
        since the last log step (for the metrics record)."""
        max_run, window = (
            int(v) for v in reduce_max(torch.stack([self.max_run, self.window])).tolist()
        )
        self.max_run = self.run.clone()
        self.window = torch.zeros_like(self.window)
        self.total += window
        self._raise_if_exceeded(max_run, step)
        if window and report and not self.sync_each_step:  # plain AdamW reported them already
            logger.warning(
                "skipped %d optimizer step(s) with a non-finite loss or gradient norm "
                "(up to step %d)",
                window,
                step,
            )
        return window

    def _raise_if_exceeded(self, run: int, step: int) -> None:
        if run >= self.limit:
            raise NonFiniteLossError(
                f"{run} consecutive optimizer steps up to step {step} had a non-finite loss or "
                f"gradient norm (limit --max-nonfinite {self.limit}); the model was not updated "
                "on them. Lower the learning rate, set --clip-grad, or use bf16/fp32, then resume "
                "from the last checkpoint."
            )

    # ---- checkpoint ------------------------------------------------------------------------------
    def state(self) -> dict[str, int]:
        return {"run": int(self.run), "total": self.total + int(self.window)}

    def load(self, state: dict[str, int]) -> None:
        self.run.fill_(int(state.get("run", 0)))
        self.max_run = self.run.clone()
        self.total = int(state.get("total", 0))
