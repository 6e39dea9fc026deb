"""Run visibility: ``metrics.jsonl``, optional TensorBoard events, and MFU.

MFU = achieved model FLOP/s / peak FLOP/s = ``samples_per_s * flops_per_sample / (peak * world)``
with ``flops_per_sample`` from :meth:`AudioMAE.flops_per_sample` (forward + backward matmuls) and
the dense bf16 tensor-core peak of the GPU (no sparsity), looked up by name or given.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"

# Dense bf16 peak FLOP/s per GPU (vendor datasheets, no sparsity). First matching substring wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),  # SXM
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
)


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device: the override, the table entry for the GPU's name, or None."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops
    logger.info("no peak FLOP/s known for %r: MFU is not reported (use --peak-tflops)", name)
    return None


def mfu(
    samples_per_s: float, flops_per_sample: float, peak: float | None, world_size: int
) -> float | None:
    """Model FLOPs utilisation over all devices, or None without a peak."""
    if not peak:
        return None
    return samples_per_s * flops_per_sample / (peak * world_size)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / inf
    return value


class MetricsWriter:
    """Appends one JSON object per log step to ``RUN_DIR/metrics.jsonl`` (and TensorBoard)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb = _tensorboard_writer(Path(run_dir) / "tb") if tensorboard else None

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        self._file.write(json.dumps(clean, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if (
                    key not in ("step", "time")
                    and isinstance(value, (int, float))
                    and value is not None
                ):
                    self._tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _tensorboard_writer(log_dir: Path) -> Any:
    """A ``SummaryWriter`` when the tensorboard package is installed, else None (silently)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # ImportError, or a broken tensorboard install
        return None
    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of ``RUN_DIR/metrics.jsonl`` (empty list if none)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | Path, last_step: int) -> None:
    """Drop records after ``last_step`` (a resumed run re-does those steps and logs them again)."""
    records = read_metrics(run_dir)
    kept = [r for r in records if r.get("step", 0) <= last_step]
    if len(kept) != len(records):
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        atomic_write_bytes(Path(run_dir) / METRICS_NAME, text.encode())
