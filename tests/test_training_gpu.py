"""Pretraining on a CUDA device (skipped without one): bf16 + compile + fused AdamW, fp16 + scaler,
device-side skipping of non-finite steps.

Run as a script for a throughput / MFU measurement of a preset on random crops::

    python -m tests.test_training_gpu --preset base --per-device-batch 256 --steps 40
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import IterableDataset

from audiomaepp import AudioMAE
from audiomaepp.training import (
    LoopConfig,
    NonFiniteLossError,
    TrainConfig,
    list_checkpoints,
    pretrain,
    read_metrics,
)
from audiomaepp.training.metrics import peak_flops
from tests.test_training import FlakyMAE

from .conftest import losses, tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _cuda(shard_dir: Path, out: Path, **kw):
    return tiny_config(shard_dir, out, device="cuda", **kw)


def test_cuda_bf16_compiled_fused_run_and_resume(shard_dir, tmp_path):
    cfg = _cuda(shard_dir, tmp_path / "run", max_steps=30, stop_after=20, save_every=10)
    first = pretrain(cfg)
    p = first.plan
    assert (p["precision"], p["compile"], p["fused_adamw"]) == ("bf16", True, True)
    second = pretrain(cfg.replace(resume="auto", stop_after=None))
    assert second.finished and second.step == 30
    curve = losses(read_metrics(cfg.out_dir))
    assert sorted(curve) == list(range(1, 31))
    assert sum(curve[s] for s in (28, 29, 30)) / 3 < curve[1] - 0.2
    if peak_flops(torch.device("cuda")) is not None:  # a GPU in the table: MFU is reported
        assert read_metrics(cfg.out_dir)[-1]["mfu"] > 0
    assert AudioMAE.from_pretrained(second.model_dir).config == cfg.model_config()


def test_cuda_fp16_grad_scaler(shard_dir, tmp_path):
    cfg = _cuda(
        shard_dir, tmp_path / "run", max_steps=10, precision="fp16", compile=False, save_every=5
    )
    result = pretrain(cfg)
    assert result.finished and all(math.isfinite(v) for v in losses(result.history).values())
    state = json.loads((list_checkpoints(cfg.out_dir)[-1] / "state.json").read_text())
    assert state["scaler"]["scale"] > 0


def test_cuda_fused_skip_and_stop(shard_dir, tmp_path):
    cfg = _cuda(shard_dir, tmp_path / "run", max_steps=6, compile=False, save_every=1, keep_last=0)
    result = pretrain(cfg, model=FlakyMAE(cfg.model_config(), bad_calls={2, 3}))
    assert [r["skipped"] for r in result.history] == [0, 0, 1, 1, 0, 0]
    w2, w4 = (
        AudioMAE.from_pretrained(list_checkpoints(cfg.out_dir)[i]).state_dict() for i in (1, 3)
    )
    assert all(torch.equal(w2[k], w4[k]) for k in w2)
    cfg = _cuda(shard_dir, tmp_path / "run2", max_steps=20, compile=False, max_nonfinite=3)
    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        pretrain(cfg, model=FlakyMAE(cfg.model_config(), bad_calls=set(range(4, 100))))


# ---- throughput measurement (script) -------------------------------------------------------------
class RandomCrops(IterableDataset):
    """Standard-normal crops ``(1, 200, 80)``: measures the model, not the data pipeline."""

    def __init__(self, samples_per_epoch: int) -> None:
        self.samples_per_epoch, self.batch_size = samples_per_epoch, 1

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.epoch)
        while True:
            yield torch.randn(1, 200, 80, generator=g)


def benchmark(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="base")
    ap.add_argument("--per-device-batch", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default="/tmp/bench_run")
    a = ap.parse_args(argv)
    cfg = TrainConfig(
        preset=a.preset,
        out_dir=a.out,
        viz_every=0,
        export=False,
        loop=LoopConfig(
            batch_size=a.batch_size,
            per_device_batch=a.per_device_batch,
            max_steps=a.steps,
            warmup_steps=5,
            log_every=10,
            save_every=0,
            num_workers=2,
            precision=a.precision,
            compile=a.compile,
            progress=False,
            tensorboard=False,
        ),
    )
    result = pretrain(cfg, dataset=RandomCrops(a.batch_size * 1000))
    last = result.history[-1]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out = {
        "device": device,
        "preset": a.preset,
        "plan": result.plan,
        "samples_per_s": last["samples_per_s"],
        "mfu": last["mfu"],
        "loss": last["loss"],
        "max_mem_gb": torch.cuda.max_memory_allocated() / 1e9
        if torch.cuda.is_available()
        else None,
        "history": [(r["step"], round(r["samples_per_s"], 1), r["mfu"]) for r in result.history],
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    benchmark()
