"""Peak memory of ``prepare`` and of the folder loader on a 20-minute and a 3-hour recording.

Writes two 16 kHz 16-bit recordings (noise; 38 MB and 346 MB), then, each in a fresh process,
measures the peak resident memory (``VmHWM``) of ``prepare`` with 1 worker (everything in one
process) and with 2 (the parent and each worker process), and of ``FolderDataset`` taking crops
straight from the file. The goal: the 3-hour file needs no more than the 20-minute one, within
25 % or 150 MB.

    python -m benchmarks.bench_long_files
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .common import cpu_model, device_info, write_result

SR = 16_000

_CHILD = r"""
import json, sys, time
from pathlib import Path
from audiomaepp.data import FolderDataset, PrepareConfig, prepare_shards

def peak_mb(pid="self"):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024

mode, audio, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
after_imports = peak_mb()
t0 = time.perf_counter()
if mode == "prepare":
    import multiprocessing as mp
    from audiomaepp.data import prepare as prep
    peaks = {}
    real = prep._Writer.add
    def add(self, index, job, result):  # sample the worker processes' peaks while they live
        for child in mp.active_children():
            try:
                peaks[child.pid] = max(peaks.get(child.pid, 0), peak_mb(child.pid))
            except OSError:
                pass
        return real(self, index, job, result)
    prep._Writer.add = add
    cfg = PrepareConfig(workers=workers, shard_size_mb=1000)
    report = prepare_shards([audio, sys.argv[5]], out, cfg, progress=False)
    extra = {"clips": report.manifest["clips"], "worker_peak_mb": max(peaks.values(), default=0)}
else:
    n = sum(1 for _ in FolderDataset([audio], 16, shuffle_buffer=0))
    extra = {"crops": n}
print("RESULT", json.dumps({"peak_mb": peak_mb(), "after_imports_mb": after_imports,
                            "seconds": time.perf_counter() - t0, **extra}))
"""


def _recording(path: Path, minutes: float, rng: np.random.Generator) -> Path:
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        for _ in range(int(minutes)):  # a minute at a time: the writer's memory stays small
            f.write((0.1 * rng.standard_normal(60 * SR)).astype(np.float32))
    return path


def _measure(mode: str, audio: Path, short: Path, out: Path, workers: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-c", _CHILD, mode, str(audio), str(out), str(workers), str(short)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode:
        raise RuntimeError(res.stdout[-2000:] + res.stderr[-2000:])
    return json.loads(res.stdout.split("RESULT", 1)[1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, nargs=2, default=[20, 180], metavar=("SHORT", "LONG"))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root, rng = Path(tmp), np.random.default_rng(0)
        files = {m: _recording(root / f"rec_{m:g}min.wav", m, rng) for m in args.minutes}
        tiny = _recording(root / "tiny.wav", 1, rng)  # a second input, so workers=2 uses a pool
        for mode, workers in (("prepare", 1), ("prepare", 2), ("folder", 0)):
            for minutes, path in files.items():
                t0 = time.perf_counter()
                row = _measure(mode, path, tiny, root / f"out-{mode}{workers}-{minutes:g}", workers)
                row.update(mode=mode, workers=workers, minutes=minutes)
                row["wall_s"] = time.perf_counter() - t0
                rows.append(row)
                print(json.dumps(row), flush=True)
    verdicts = []
    for mode, workers in (("prepare", 1), ("prepare", 2), ("folder", 0)):
        short, long = (r for r in rows if r["mode"] == mode and r["workers"] == workers)
        key = "worker_peak_mb" if workers > 1 else "peak_mb"
        for what in {"peak_mb", key}:
            a, b = short[what], long[what]
            ok = b <= max(1.25 * a, a + 150)
            verdicts.append(
                {
                    "mode": mode,
                    "workers": workers,
                    "measure": what,
                    "short_mb": a,
                    "long_mb": b,
                    "within_25pct_or_150mb": ok,
                }
            )
    for v in verdicts:
        print(v)
    env = {**device_info(torch.device("cpu")), "cpu_model": cpu_model()}
    write_result(
        "long_files_memory",
        {"settings": vars(args), "env": env, "results": rows, "verdicts": verdicts},
        args.out,
    )
    return {"results": rows, "verdicts": verdicts}


if __name__ == "__main__":
    main()
