"""Helpers shared by the benchmark scripts: device description, timing, JSON results."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def device_info(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "host_cpus": __import__("os").cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            capability=f"{props.major}.{props.minor}",
        )
    else:
        info["gpu"] = None
        info["cpu"] = platform.processor() or platform.machine()
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls (device-synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def write_result(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    """Write ``payload`` plus a UTC time stamp as ``<out_dir>/<name>.json``; return the path."""
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **payload,
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def cpu_model() -> str:
    """The CPU as ``/proc/cpuinfo`` names it, e.g. 'AMD EPYC (family 26, model 2, 2596 MHz)'.

    Virtual machines often report only the brand, so family, model and clock come with it
    (AMD family 26 is Zen 5).
    """
    try:
        text = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return "unknown"
    info = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines())
    )
    mhz = info.get("cpu MHz", "?").split(".")[0]
    return (
        f"{info.get('model name', 'unknown')} (family {info.get('cpu family', '?')}, "
        f"model {info.get('model', '?')}, {mhz} MHz)"
    )
