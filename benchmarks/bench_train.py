"""Pretraining throughput of the library's own training step (``Trainer.train_step``).

Measures samples/s, MFU and peak memory per preset and per-device batch, with the data already on
the device (the loader is measured by ``bench_loader``). Optionally writes a profiler table.

    python -m benchmarks.bench_train --runs tiny:512 base:128 base:512 large:128 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

from audiomaepp.training import LoopConfig, TrainConfig, Trainer
from audiomaepp.training.distributed import init_distributed
from audiomaepp.training.metrics import peak_flops

from .common import device_info, sync, write_result


class _Crops(torch.utils.data.IterableDataset):
    """Stand-in dataset: the trainer needs one for its loader; the timed steps never read it."""

    rank, world_size = 0, 1

    def __init__(self, samples_per_epoch: int) -> None:
        self.samples_per_epoch = samples_per_epoch

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        pass

    def __iter__(self):
        while True:
            yield torch.zeros(1, 200, 80)


class _DeviceBatches:
    """Feeds one fixed, already-on-device batch: the step is timed without the input pipeline."""

    def __init__(self, batch: torch.Tensor) -> None:
        self.batch = batch

    def next(self) -> torch.Tensor:
        return self.batch

    def start(self, epoch: int, step_in_epoch: int) -> None:
        pass


def make_trainer(
    preset: str,
    batch: int,
    device: str,
    precision: str,
    compile_: bool | None,
    out_dir: str,
    **model,
) -> Trainer:
    cfg = TrainConfig(
        preset=preset,
        model=model,
        out_dir=out_dir,
        export=False,
        viz_every=0,
        loop=LoopConfig(
            batch_size=batch,
            device=device,
            precision=precision,
            compile=compile_,
            max_steps=10**6,
            warmup_steps=10,
            num_workers=0,
            progress=False,
            tensorboard=False,
            save_every=0,
        ),
    )
    env = init_distributed(device)
    trainer = Trainer(cfg, env, dataset=_Crops(batch * 10_000))
    x = torch.randn(batch, 1, 200, 80, device=env.device)
    trainer.batches = _DeviceBatches(x)
    return trainer


def measure(trainer: Trainer, warmup: int, iters: int) -> dict:
    device = trainer.device
    t0 = time.perf_counter()
    for _ in range(warmup):
        loss, *_ = trainer.train_step()
    float(loss)  # includes compilation
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        loss, *_ = trainer.train_step()
        trainer.step += 1
    sync(device)
    sec = (time.perf_counter() - start) / iters
    batch = trainer.plan.global_batch
    sps = batch / sec
    peak = peak_flops(device, None)
    return {
        "samples_per_s": sps,
        "step_ms": 1000 * sec,
        "warmup_s": warm_s,
        "final_loss": float(loss),
        "mfu": sps * trainer.flops_per_sample / peak if peak else None,
        "tflops_per_s": sps * trainer.flops_per_sample / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
    }


def profile(trainer: Trainer, steps: int, path: Path) -> None:
    """Top kernels of a few steps (after warm-up) as a text table."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if trainer.device.type == "cuda" else []
    )
    with torch_profile(activities=acts) as prof:
        for _ in range(steps):
            trainer.train_step()
        sync(trainer.device)
    key = "cuda_time_total" if trainer.device.type == "cuda" else "cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=30))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--runs",
        nargs="+",
        default=["tiny:512", "base:128", "base:512", "large:128", "large:512"],
        help="PRESET:PER_DEVICE_BATCH items",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument(
        "--compile", dest="compile_", default=None, action=argparse.BooleanOptionalAction
    )
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument(
        "--budget-s", type=float, default=1e9, help="skip remaining runs after this much time"
    )
    p.add_argument(
        "--profile", default=None, help="PRESET:BATCH to profile (writes profile_<...>.txt)"
    )
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument(
        "--model", nargs="*", default=[], help="model overrides KEY=INT for small CPU checks"
    )
    args = p.parse_args(argv)
    overrides = {k: int(v) for k, v in (kv.split("=") for kv in args.model)}
    device = torch.device(args.device)
    rows, start = [], time.perf_counter()
    out = Path(args.out) if args.out else Path(__file__).parent / "results"
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.runs:
            preset, batch = item.split(":")
            if time.perf_counter() - start > args.budget_s:
                rows.append({"run": item, "skipped": "time budget"})
                continue
            try:
                trainer = make_trainer(
                    preset, int(batch), args.device, args.precision, args.compile_, tmp, **overrides
                )
                row = {
                    "run": item,
                    "preset": preset,
                    "batch": int(batch),
                    "precision": trainer.plan.precision,
                    "compile": trainer.plan.compile,
                    "fused_adamw": trainer.plan.fused_adamw,
                    "gflops_per_sample": trainer.flops_per_sample / 1e9,
                    **measure(trainer, args.warmup, args.iters),
                }
                if args.profile == item:
                    profile(trainer, 3, out / f"profile_{preset}_{batch}_{device.type}.txt")
            except Exception as exc:  # a failed run is recorded, the others still run
                row = {"run": item, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            rows.append(row)
            print(
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()},
                flush=True,
            )
            with contextlib.suppress(NameError):
                del trainer
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write_result(
                f"train_{device.type}",
                {"settings": vars(args), "env": device_info(device), "results": rows},
                out,
            )
    return {"results": rows}


if __name__ == "__main__":
    main()
