"""Process-group set-up for one process, ``torchrun`` on one node, or ``torchrun`` across nodes.

Nothing here launches processes: ``torchrun`` (``python -m torch.distributed.run``) does, and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT`` for us. The backend is
NCCL on GPUs and gloo on CPUs. A separate gloo group carries host-side control flags (stop
requests) so that agreeing on them never waits for the GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from ..devices import resolve_device

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    control_group: object | None = None  # gloo group for host-side flags (None when world == 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without it)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def pick_device(choice: str, local_rank: int) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` -> the device of this process (``cuda:LOCAL_RANK`` on GPUs)."""
    if resolve_device(choice).type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_choice: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Pick the device and, when ``WORLD_SIZE > 1``, join the process group torchrun set up."""
    rank, world, local = env_world()
    device = pick_device(device_choice, local)
    if world == 1:
        return DistEnv(0, 1, 0, device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    logger.info(
        "rank %d/%d (local %d) on %s, backend %s", rank, world, local, device, dist.get_backend()
    )
    return DistEnv(dist.get_rank(), dist.get_world_size(), local, device, control)


def shutdown_distributed() -> None:
    """Leave the process group (if any); safe to call twice."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device_choice: str = "auto", timeout_s: int = 1800) -> Iterator[DistEnv]:
    """The launch block of every training job (pretraining, each fine-tuning job).

    Yields this process's :class:`DistEnv` (joining torchrun's process group when
    ``WORLD_SIZE > 1``) and leaves the group at the end, error or not, if this call created it;
    a caller that set up its own process group keeps it.
    """
    owned = not (dist.is_available() and dist.is_initialized())
    env = init_distributed(device_choice, timeout_s)
    try:
        yield env
    finally:
        if owned:
            shutdown_distributed()


def all_reduce_(tensor: torch.Tensor, env: DistEnv, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce over the default group (no-op on one process)."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


def barrier(env: DistEnv) -> None:
    """Wait for every rank (host-side, on the gloo control group)."""
    if env.distributed:
        dist.barrier(group=env.control_group)


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on any (a blocking MAX on the control group)."""
    if not env.distributed:
        return flag
    buf = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=env.control_group)
    return bool(buf.item())


class FlagAgreement:
    """All ranks agree on a host-side flag (e.g. "a signal arrived") without stalling the GPU.

    Each call to :meth:`poll` starts an asynchronous MAX all-reduce of the local flag on the gloo
    control group and returns the result of the previous round, so the latency is hidden behind a
    training step and every rank sees the same answer at the same step.
    """

    def __init__(self, env: DistEnv) -> None:
        self.env = env
        self._pending: tuple[object, torch.Tensor] | None = None

    def poll(self, local_flag: bool) -> bool:
        if not self.env.distributed:
            return local_flag
        agreed = False
        if self._pending is not None:
            work, buf = self._pending
            work.wait()
            agreed = bool(buf.item())
        buf = torch.tensor([int(local_flag)], dtype=torch.int32)
        work = dist.all_reduce(
            buf, op=dist.ReduceOp.MAX, group=self.env.control_group, async_op=True
        )
        self._pending = (work, buf)
        return agreed

    def drain(self) -> None:
        """Finish the outstanding round (call before leaving the loop so no collective dangles)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None


def broadcast_text(text: str | None, env: DistEnv) -> str | None:
    """Rank 0's ``text`` on every rank (host-side, on the gloo control group; no pickling)."""
    if not env.distributed:
        return text
    data = b"" if text is None else text.encode()
    size = torch.tensor([len(data) if text is not None else -1], dtype=torch.int64)
    dist.broadcast(size, src=0, group=env.control_group)
    if int(size) < 0:
        return None
    buf = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if env.is_main
        else torch.empty(int(size), dtype=torch.uint8)
    )
    if int(size):
        dist.broadcast(buf, src=0, group=env.control_group)
    return bytes(buf.tolist()).decode()


def agree_int(value: int, env: DistEnv) -> tuple[int, int]:
    """``(min, max)`` of ``value`` over all ranks (equal when every rank agrees)."""
    if not env.distributed:
        return value, value
    buf = torch.tensor([value, -value], dtype=torch.int64)
    dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=env.control_group)
    return -int(buf[1]), int(buf[0])


def run_on_main(fn: Callable[[], T], env: DistEnv, what: str) -> T | None:
    """Run ``fn`` on rank 0 only and tell every rank whether it worked.

    Without this, an exception on rank 0 (disk full while writing a checkpoint) left the other
    ranks waiting in the next collective until ``dist_timeout_s`` (30 min). Now rank 0 re-raises
    its error and every other rank raises a :class:`RuntimeError` saying rank 0 failed, at once.
    Returns ``fn()``'s result on rank 0, None elsewhere.
    """
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except BaseException as exc:  # also KeyboardInterrupt: the other ranks must not wait
            error = exc
    _, failed = agree_int(int(error is not None), env)
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(
            f"rank 0 failed while {what}; rank {env.rank} stops too (see rank 0's error)"
        )
    return result
