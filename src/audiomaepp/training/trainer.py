"""The pretraining loop: one process on CPU/GPU, or DDP under ``torchrun`` across GPUs and nodes.

Per optimizer step ``s`` (0-based) every rank runs ``A`` micro-steps of ``P`` samples
(global batch ``G = P * A * world``): forward + backward under autocast, DDP gradient reduction
on the last micro-step only (``no_sync`` before), then the global grad norm, optional clipping,
and AdamW with the lr of step ``s``. Non-finite steps are skipped. Only rank 0 writes.

Shapes: batches ``(P, 1, 200, 80)``; masking noise ``(G, 250)`` per step, rank ``r`` micro-step
``m`` using rows ``(r * A + m) * P ...`` (see :mod:`.noise`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from ..errors import CheckpointError
from ..fileio import atomic_dir, atomic_write_bytes
from ..model import AudioMAE
from . import checkpoint as ckpt
from . import optim
from .config import LoopConfig, TrainConfig
from .data import BatchStream, build_dataset, make_rank_loader
from .distributed import (
    DistEnv,
    FlagAgreement,
    agree_int,
    all_reduce_,
    barrier,
    broadcast_text,
    process_group,
    run_on_main,
)
from .faults import StopRequest
from .guard import NonFiniteGuard
from .metrics import MetricsWriter, mfu, peak_flops, truncate_metrics
from .noise import MaskNoise, micro_slice
from .optim import adamw, trainable_parameters
from .schedule import LRSchedule
from .state import TrainState
from .viz import reconstruct, save_reconstruction_png

logger = logging.getLogger(__name__)

MODEL_DIR = "model"


# ---- the plan: numbers that depend on the machine and the data -----------------------------------
@dataclass(frozen=True)
class RunPlan:
    """Resolved settings of one run on this machine (written to ``RUN_DIR/plan.json``)."""

    device: str
    precision: str  # "bf16" | "fp16" | "fp32"
    compile: bool
    fused_adamw: bool
    world_size: int
    per_device_batch: int  # P
    accum_steps: int  # A
    global_batch: int  # G = P * A * world
    samples_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan_run(
    loop: LoopConfig, device: torch.device, world_size: int, samples_per_epoch: int
) -> RunPlan:
    """Work out precision, compile, batch split, steps and schedule lengths; raise on misfits."""
    cuda = device.type == "cuda"
    precision = loop.precision if loop.precision != "auto" else ("bf16" if cuda else "fp32")
    G = loop.batch_size
    P = loop.per_device_batch or G // world_size
    if P < 1 or G % (P * world_size):
        raise ValueError(
            f"global batch {G} is not a multiple of per-device batch {P} x {world_size} device(s); "
            "choose --batch-size = per-device x devices x accumulation steps"
        )
    steps_per_epoch = samples_per_epoch // G
    if steps_per_epoch < 1:
        raise ValueError(
            f"samples_per_epoch {samples_per_epoch} is smaller than the global batch {G} "
            "(set --samples-per-epoch, or use more clips or a smaller --batch-size)"
        )
    total = loop.max_steps if loop.max_steps is not None else loop.epochs * steps_per_epoch
    if loop.warmup_steps is not None:
        warmup = loop.warmup_steps
    elif loop.max_steps is not None:
        # a shortened schedule keeps the recipe's warm-up share (10 of 100)
        warmup = round(total * loop.warmup_epochs / loop.epochs)
    else:
        warmup = round(loop.warmup_epochs * steps_per_epoch)
    return RunPlan(
        device=str(device),
        precision=precision,
        compile=loop.compile if loop.compile is not None else cuda,
        fused_adamw=loop.fused_adamw if loop.fused_adamw is not None else cuda,
        world_size=world_size,
        per_device_batch=P,
        accum_steps=G // (P * world_size),
        global_batch=G,
        samples_per_epoch=samples_per_epoch,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=min(warmup, total),
        peak_lr=loop.peak_lr(),
    )


# ---- result --------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What a call of :func:`pretrain` did (the same on every rank; only rank 0 wrote files)."""

    run_dir: Path
    step: int  # optimizer steps completed (over all resumes)
    total_steps: int  # where the schedule ends
    finished: bool  # reached total_steps (the model was exported)
    interrupted: bool  # stopped early by a signal or stop_after (a checkpoint was written)
    model_dir: Path | None  # RUN_DIR/model when finished
    checkpoint: Path | None  # the last checkpoint written or resumed from
    final_loss: float | None  # last logged (global mean) loss
    elapsed_s: float  # wall time of this call
    # metrics records logged by this call
    history: list[dict[str, Any]] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("run_dir", "model_dir", "checkpoint"):
            d[key] = None if d[key] is None else str(d[key])
        return d


# ---- small helpers -------------------------------------------------------------------------------
class LossModule(nn.Module):
    """``(x, noise) -> loss``: what DDP wraps and torch.compile compiles.

    Forward and loss live in one module, so they compile to one graph.
    """

    def __init__(self, mae: AudioMAE) -> None:
        super().__init__()
        self.mae = mae

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.mae(x, noise=noise).loss


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python RNGs (model init is the only global-RNG consumer)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients (device tensor; no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device)
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    )


def clip_to(params: list[torch.Tensor], max_norm: float, total: torch.Tensor) -> None:
    """Scale gradients so their global norm is at most ``max_norm`` (no host sync)."""
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=True)
        return
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(coef.to(p.grad.dtype))


# ---- the trainer ---------------------------------------------------------------------------------
class Trainer:
    """Builds everything for one rank and runs the loop; see the module docstring."""

    progress_desc = "pretrain"  # the progress bar's label

    def __init__(
        self, cfg: TrainConfig, env: DistEnv, dataset: Any = None, model: AudioMAE | None = None
    ) -> None:
        self.cfg, self.loop, self.env = cfg, cfg.loop, env
        self.device = env.device
        self.run_dir = Path(cfg.out_dir)
        seed_everything(self.loop.seed)
        self.model = (model if model is not None else AudioMAE(cfg.model_config())).to(self.device)
        self.dataset = dataset if dataset is not None else build_dataset(cfg, env)
        self._check_dataset()
        self.plan = plan_run(
            self.loop, self.device, env.world_size, int(self.dataset.samples_per_epoch)
        )
        self.schedule = LRSchedule(
            self.plan.peak_lr, self.plan.warmup_steps, self.plan.total_steps, self.loop.min_lr
        )
        self._setup_numerics()
        self._setup_data()
        self.step = 0
        self.elapsed_before = 0.0  # seconds spent by earlier runs (from the checkpoint)
        self.last_checkpoint: Path | None = None
        self.history: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()
        self._viz_input: tuple[torch.Tensor, torch.Tensor] | None = None
        # progress-bar fields (loss, lr, ... and after_step's values)
        self._postfix: dict[str, str] = {}

    # -- set-up ------------------------------------------------------------------------------------
    def _check_dataset(self) -> None:
        for attr, want in (("rank", self.env.rank), ("world_size", self.env.world_size)):
            have = getattr(self.dataset, attr, want)
            if have != want:
                raise ValueError(f"dataset.{attr}={have} but this process is {attr} {want}")

    def _setup_numerics(self) -> None:
        plan, cuda = self.plan, self.device.type == "cuda"
        if cuda:
            # fp32 matmuls (the fp32 path) on tensor cores
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=plan.precision == "fp16")
        self.optimizer = self.make_optimizer()
        self.params = trainable_parameters(self.optimizer)
        self.guard = NonFiniteGuard(
            self.device,
            self.loop.max_nonfinite,
            scaler=self.scaler,
            fused=plan.fused_adamw,
            distributed=self.env.distributed,
        )
        module: nn.Module = self.make_loss_module()
        if self.env.distributed:
            ids = [self.device.index] if cuda else None
            module = DDP(module, device_ids=ids, gradient_as_bucket_view=True)  # no buffers to sync
        self.ddp = module if isinstance(module, DDP) else None
        self.forward = torch.compile(module) if plan.compile else module

    def _setup_data(self) -> None:
        P, cuda = self.plan.per_device_batch, self.device.type == "cuda"
        loader = make_rank_loader(self.dataset, P, self.loop.num_workers, pin_memory=cuda)
        self.batches = BatchStream(self.dataset, loader, P * self.plan.accum_steps)
        self.noise = MaskNoise(
            self.loop.seed, self.plan.global_batch, self.model.config.num_patches, self.device
        )
        self.flops_per_sample = self.model.flops_per_sample()
        self.peak = peak_flops(self.device, self.loop.peak_tflops)

    # -- extension points: fine-tuning (audiomaepp.finetune.trainer) overrides these ---------------
    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW's groups (each with ``params`` and ``names``): the model's decay / no-decay split.
        A group's optional ``lr_scale`` multiplies its lr (fine-tuning's layer decay)."""
        return optim.param_groups(self.model, self.loop.weight_decay)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The loop's AdamW (:func:`.optim.adamw`, fused on CUDA) over :meth:`param_groups`."""
        loop = self.loop
        return adamw(
            self.param_groups(), self.plan.peak_lr, loop.betas, loop.eps, self.plan.fused_adamw
        )

    def make_loss_module(self) -> nn.Module:
        """What DDP wraps and torch.compile compiles: ``forward(*loss_inputs(...)) -> loss``."""
        return LossModule(self.model)

    def loss_inputs(self, batch: Any, noise: torch.Tensor) -> tuple[Any, ...]:
        """Loss-module arguments for one micro-batch (moved to the device) and its noise rows."""
        return batch.to(self.device, non_blocking=True), noise

    def extra_state(self) -> dict[str, Any]:
        """JSON saved in ``state.json`` beside the :class:`TrainState` (fine-tuning: best score)."""
        return {}

    def after_step(self) -> dict[str, float] | None:
        """Called after every optimizer step, before checkpointing; returned values are logged
        (``metrics.jsonl``, progress bar). Pretraining adds nothing; fine-tuning validates here."""
        return None

    # -- resume ------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Resume as ``loop.resume`` asks, the same way on every rank: rank 0 picks the checkpoint
        (:func:`agreed_resume`), every rank loads that one, and all must then stand at the same
        step (:func:`check_same_step`). Pretraining and fine-tuning both start here."""
        path = agreed_resume(self.loop.resume, self.run_dir, self.env)
        if path is not None:
            self.resume(path)
        check_same_step(self.step, self.env)

    def resume(self, path: Path) -> None:
        """Load a checkpoint from :meth:`save` (any rank count; same recipe, see :mod:`.state`)."""
        saved = ckpt.read_train_state(path)
        for warning in saved.check_resume(self.state(), str(path)):
            logger.warning(warning)
        ckpt.load_checkpoint(path, self.model, self.optimizer, self.scaler)
        self.step = saved.step
        self.guard.load(saved.nonfinite)
        self.elapsed_before = saved.elapsed_s
        self.last_checkpoint = path
        logger.info(
            "resumed from %s at step %d (epoch %d)",
            path,
            self.step,
            self.step // self.plan.steps_per_epoch,
        )

    # -- one optimizer step ------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _micro_step(self, m: int, noise: torch.Tensor) -> torch.Tensor:
        """Forward + backward of micro-step ``m``; returns the (detached) micro-batch loss."""
        A, P = self.plan.accum_steps, self.plan.per_device_batch
        rows = noise[micro_slice(self.env.rank, m, A, P)]
        inputs = self.loss_inputs(self.batches.next(), rows)
        last = m == A - 1
        sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
        with sync:
            with self._autocast():
                loss = self.forward(*inputs)
            self.scaler.scale(loss / A).backward()
        if self.cfg.viz_every and last:
            self._viz_input = (inputs[0][:1], rows[:1])
        return loss.detach()

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """One optimizer step -> ``(loss, grad_norm, bad, lr)`` (device tensors, no host sync)."""
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            # layer-wise lr decay (fine-tuning) scales groups
            group["lr"] = lr * group.get("lr_scale", 1.0)
        noise = self.noise.for_step(self.step)
        losses = [self._micro_step(m, noise) for m in range(self.plan.accum_steps)]
        loss = torch.stack(losses).mean()
        self.scaler.unscale_(self.optimizer)
        norm = grad_norm(self.params)
        bad = self.guard.is_bad(loss, norm)
        if self.loop.clip_grad is not None:
            clip_to(self.params, self.loop.clip_grad, norm)
        self.guard.step(self.optimizer, bad)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, norm, bad, lr

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> RunResult:
        start = time.perf_counter()
        if self.env.is_main:
            self._prepare_run_dir()
        barrier(self.env)
        writer = MetricsWriter(self.run_dir, self.loop.tensorboard) if self.env.is_main else None
        end = min(self.plan.total_steps, self.loop.stop_after or self.plan.total_steps)
        interrupted = False
        try:
            with StopRequest() as stop, self._progress() as bar:
                interrupted = self._loop(end, stop, writer, bar, start)
        finally:
            if writer is not None:
                writer.close()
        return self._finish(interrupted or self.step < self.plan.total_steps, start)

    def _loop(
        self, end: int, stop: StopRequest, writer: MetricsWriter | None, bar: Any, start: float
    ) -> bool:
        """Train until ``end`` or an agreed stop request; returns whether it stopped early."""
        agree = FlagAgreement(self.env)
        window = self._new_window()
        try:
            while self.step < end:
                epoch, step_in_epoch = divmod(self.step, self.plan.steps_per_epoch)
                if self.batches.epoch != epoch:
                    self.batches.start(epoch, step_in_epoch)
                loss, norm, bad, lr = self.train_step()
                self.step += 1
                window["loss"] += torch.where(bad, torch.zeros_like(loss), loss)
                window["ok"] += (~bad).long()
                window["steps"] += 1
                self.guard.after_step(bad, loss, norm, self.step, report=self.env.is_main)
                if self.step % self.loop.log_every == 0 or self.step == end:
                    self._log(window, norm, lr, writer, bar, start)
                    window = self._new_window()
                bar.update(1)
                extra = self.after_step()
                if extra:
                    self._log_extra(extra, writer, bar)
                self._periodic()
                if agree.poll(stop.requested):
                    logger.info("stop requested: checkpointing at step %d", self.step)
                    return True
        finally:
            agree.drain()
        return False

    def _new_window(self) -> dict[str, Any]:
        zero = torch.zeros((), device=self.device)
        return {"loss": zero.clone(), "ok": zero.long(), "steps": 0, "t0": time.perf_counter()}

    def _log(
        self,
        window: dict[str, Any],
        norm: torch.Tensor,
        lr: float,
        writer: MetricsWriter | None,
        bar: Any,
        start: float,
    ) -> None:
        """All-reduce the window's loss and counters (one host sync), then report them."""
        sums = all_reduce_(torch.stack([window["loss"], window["ok"].float()]), self.env)
        loss_sum, ok, gnorm = [*sums.tolist(), float(norm)]
        skipped = self.guard.at_log(
            self.step, lambda t: all_reduce_(t, self.env, op="max"), report=self.env.is_main
        )
        seconds = time.perf_counter() - window["t0"]
        sps = window["steps"] * self.plan.global_batch / max(seconds, 1e-9)
        record = {
            "step": self.step,
            "epoch": self.step / self.plan.steps_per_epoch,
            "loss": loss_sum / ok if ok else float("nan"),
            "lr": lr,
            "samples_per_s": sps,
            "mfu": mfu(sps, self.flops_per_sample, self.peak, self.env.world_size),
            "grad_norm": gnorm,
            "skipped": int(skipped),
            "time": self.elapsed_before + time.perf_counter() - start,
        }
        self.history.append(record)
        if writer is not None:
            writer.write(record)
            self._report(record, bar)

    def _log_extra(self, extra: dict[str, float], writer: MetricsWriter | None, bar: Any) -> None:
        """Log what :meth:`after_step` returned (rank 0 writes) and keep it on the progress bar."""
        record = {"step": self.step, **extra}
        self.history.append(record)
        self._postfix.update(
            {k: f"{v:.4g}" for k, v in extra.items() if isinstance(v, (int, float))}
        )
        if writer is not None:
            writer.write(record)
            if not bar.disable:
                bar.set_postfix(self._postfix, refresh=False)
            else:
                logger.info(
                    "step %d: %s", self.step, ", ".join(f"{k} {v}" for k, v in extra.items())
                )

    def _report(self, r: dict[str, Any], bar: Any) -> None:
        mfu_text = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        if not bar.disable:
            self._postfix.update(
                loss=f"{r['loss']:.4f}",
                lr=f"{r['lr']:.2e}",
                sps=f"{r['samples_per_s']:.0f}",
                mfu=mfu_text,
            )
            bar.set_postfix(self._postfix, refresh=False)
        else:
            logger.info(
                "step %d/%d loss %.4f lr %.3e %.1f samples/s MFU %s",
                r["step"],
                self.plan.total_steps,
                r["loss"],
                r["lr"],
                r["samples_per_s"],
                mfu_text,
            )

    def _periodic(self) -> None:
        if self.cfg.viz_every and self.step % self.cfg.viz_every == 0 and self.env.is_main:
            self.save_viz()
        if self.loop.save_every and self.step % self.loop.save_every == 0:
            self.save()

    def _progress(self) -> Any:
        disable = not (self.loop.progress and self.env.is_main)
        return tqdm(
            total=self.plan.total_steps,
            initial=self.step,
            disable=disable,
            unit="step",
            dynamic_ncols=True,
            desc=self.progress_desc,
        )

    # -- outputs -----------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_partial(self.run_dir)
        truncate_metrics(self.run_dir, self.step)  # a resumed run logs the redone steps again
        atomic_write_bytes(self.run_dir / "train_config.json", self.cfg.to_json().encode())
        plan = {
            "plan": self.plan.to_dict(),
            "model_config": self.model.config.to_dict(),
            "num_params": self.model.num_params(),
            "flops_per_sample": self.flops_per_sample,
        }
        atomic_write_bytes(self.run_dir / "plan.json", json.dumps(plan, indent=2).encode())

    def state(self) -> TrainState:
        """What a checkpoint of the current step stores besides tensors (see :mod:`.state`)."""
        cfg, plan = self.loop, self.plan
        return TrainState(
            step=self.step,
            global_batch=plan.global_batch,
            steps_per_epoch=plan.steps_per_epoch,
            total_steps=plan.total_steps,
            warmup_steps=plan.warmup_steps,
            peak_lr=plan.peak_lr,
            min_lr=cfg.min_lr,
            weight_decay=cfg.weight_decay,
            betas=tuple(cfg.betas),
            eps=cfg.eps,
            clip_grad=cfg.clip_grad,
            precision=plan.precision,
            seed=cfg.seed,
            model_config=self.model.config.to_dict(),
            **self._layout(),
            nonfinite=self.guard.state(),
            train_config=self.cfg.to_dict(),
            elapsed_s=self.elapsed_before + time.perf_counter() - self._t0,
        )

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank must call it).

        A failed save (disk full, quota, I/O error) ends every rank at once with the error,
        rather than leaving the others waiting for rank 0 until the collective timeout.
        """
        path = run_on_main(
            self._write_checkpoint, self.env, f"writing the checkpoint of step {self.step}"
        )
        if path is not None:
            self.last_checkpoint = path
        return path

    def _layout(self) -> dict[str, int]:
        return {
            "world_size": self.env.world_size,
            "per_device_batch": self.plan.per_device_batch,
            "num_workers": self.loop.num_workers,
        }

    def _export(self, model_dir: Path) -> None:
        """``RUN_DIR/model`` as one unit: weights and config are never from two different saves."""
        with atomic_dir(model_dir) as tmp:
            self.model.save_pretrained(tmp)

    def _write_checkpoint(self) -> Path:
        return ckpt.save_checkpoint(
            self.run_dir,
            self.step,
            self.model,
            self.optimizer,
            {**self.state().to_json(), **self.extra_state()},
            self.scaler,
            self.loop.keep_last,
        )

    def save_viz(self) -> Path | None:
        if self._viz_input is None:
            return None
        x, noise = self._viz_input
        images = reconstruct(self.model, x, noise)
        path = self.run_dir / "viz" / f"step_{self.step:08d}.png"
        return save_reconstruction_png(path, images, title=f"step {self.step}")

    def _finish(self, interrupted: bool, start: float) -> RunResult:
        if self.step > 0 or interrupted:
            self.save()
        finished = self.step >= self.plan.total_steps
        model_dir = None
        if finished and self.cfg.export:
            model_dir = self.run_dir / MODEL_DIR
            run_on_main(lambda: self._export(model_dir), self.env, "exporting the model")
        barrier(self.env)
        final = next((r["loss"] for r in reversed(self.history) if "loss" in r), None)
        result = RunResult(
            self.run_dir,
            self.step,
            self.plan.total_steps,
            finished,
            interrupted and not finished,
            model_dir,
            self.last_checkpoint,
            final,
            time.perf_counter() - start,
            self.history,
            self.plan.to_dict(),
        )
        if self.env.is_main:
            atomic_write_bytes(
                self.run_dir / "result.json",
                json.dumps(result.to_dict(), indent=1, default=str).encode(),
            )
        return result


def agreed_resume(resume: str | None, run_dir: str | Path, env: DistEnv) -> Path | None:
    """The checkpoint to resume from, chosen by rank 0 and broadcast: every rank loads the same one.

    Resolving ``--resume auto`` on each rank could pick different checkpoints when a shared file
    system lags (a new ``step_*`` folder visible on one node only), and the replicas would
    silently diverge.
    """
    chosen = None
    if env.is_main:
        path = ckpt.resolve_resume(resume, run_dir)
        chosen = None if path is None else str(path)
    chosen = broadcast_text(chosen, env)
    return None if chosen is None else Path(chosen)


def check_same_step(step: int, env: DistEnv) -> None:
    """Raise on every rank unless all ranks resumed at the same step."""
    low, high = agree_int(step, env)
    if low != high:
        raise CheckpointError(
            f"ranks resumed at different steps ({low} .. {high}; this rank: {step}): "
            "the checkpoint folder is not the same on every node (a lagging shared file system?)"
        )


def pretrain(config: TrainConfig, dataset: Any = None, model: AudioMAE | None = None) -> RunResult:
    """Run (or resume) a pretraining run; the Python entry point of ``audiomaepp pretrain``.

    Works in one process (CPU or GPU) and under ``torchrun`` (one call per rank; the process group
    is created from torchrun's environment and destroyed at the end if this call created it).
    ``dataset``: optional ready-made per-rank dataset with ``samples_per_epoch`` and
    ``set_epoch(epoch, start_index)`` yielding ``(1, 200, 80)`` crops (default: built from
    ``config.data`` by :func:`audiomaepp.data.make_pretraining_dataset`). ``model``: an
    :class:`AudioMAE` to train instead of a fresh one from the config.
    """
    with process_group(config.loop.device, config.loop.dist_timeout_s) as env:
        trainer = Trainer(config, env, dataset=dataset, model=model)
        trainer.restore()
        return trainer.run()


__all__ = ["RunPlan", "RunResult", "Trainer", "LossModule", "plan_run", "pretrain", "build_dataset"]
