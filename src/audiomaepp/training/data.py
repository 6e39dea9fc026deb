"""How the trainer reads ``audiomaepp.data``: this rank's dataset, its loader, epoch positions.

The pipeline itself (shards, folder decoding, crops, per-rank / per-worker split, resume skip)
lives in :mod:`audiomaepp.data.loader`; this module only wires it to the loop.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .distributed import DistEnv


def build_dataset(cfg: TrainConfig, env: DistEnv) -> Any:
    """This rank's share of the pretraining crops, deterministic from ``(seed, rank, epoch)``.

    Crops are ``INPUT_FRAMES`` long, the front end's input: ``AudioMAEConfig.img_size`` is fixed
    to it (see :data:`audiomaepp.model.config.INPUT_GEOMETRY`), so no model needs another length.
    """
    from ..data import make_pretraining_dataset

    if not cfg.data:
        raise ValueError(
            "no training data: set TrainConfig.data / --data (shards, manifest folder or audio)"
        )
    if not any(ch in cfg.data for ch in "*?[") and not Path(cfg.data).exists():
        raise FileNotFoundError(f"training data {cfg.data}: no such file or folder")
    return make_pretraining_dataset(
        cfg.data,
        cfg.loop.samples_per_epoch,
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.loop.seed,
        shuffle_buffer=cfg.shuffle_buffer,
    )


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGTERM and SIGINT.

    A scheduler's SIGTERM (or torchrun forwarding one, or Ctrl-C) reaches the whole process group.
    Workers would die of it, and the main process would then fail on the next batch instead of
    checkpointing; the main process decides when to stop, and the workers exit when it shuts the
    loader down (or when their watchdog sees it gone).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_rank_loader(
    dataset: Any, per_device_batch: int, num_workers: int, pin_memory: bool
) -> Any:
    """``audiomaepp.data.make_loader`` with workers that leave stop signals to the main process."""
    from ..data import make_loader

    return make_loader(
        dataset,
        per_device_batch,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=ignore_stop_signals,
    )


class BatchStream:
    """This rank's micro-batches ``(P, 1, 200, 80)``, one epoch at a time, from any position."""

    def __init__(self, dataset: Any, loader: Any, samples_per_step: int) -> None:
        self.dataset, self.loader = dataset, loader
        self.samples_per_step = samples_per_step  # A * P on this rank
        self._it: Iterator[Any] | None = None
        self.epoch = -1

    def start(self, epoch: int, step_in_epoch: int) -> None:
        """Position the stream at optimizer step ``step_in_epoch`` of ``epoch`` (resume)."""
        self.dataset.set_epoch(epoch, step_in_epoch * self.samples_per_step)
        self._it, self.epoch = iter(self.loader), epoch

    def next(self) -> torch.Tensor:
        if self._it is None:
            raise RuntimeError("BatchStream.start() was not called")
        try:
            batch = next(self._it)
        except StopIteration:
            raise RuntimeError(
                f"the data loader ran out in epoch {self.epoch}: it yields fewer "
                "samples than samples_per_epoch / world_size"
            ) from None
        return batch[0] if isinstance(batch, (tuple, list)) else batch
