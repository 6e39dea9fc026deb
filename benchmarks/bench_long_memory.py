"""Peak memory of ``embed`` and ``predict`` on one long file: a 20-minute and a 3-hour file, in
fp32 and in reduced precision. The goal: the 3-hour file needs no more peak memory than the
20-minute one (within 25 % or 150 MB).

    python -m benchmarks.bench_long_memory --out-dir /tmp/longmem          # a 1-block model
    python -m benchmarks.bench_long_memory --out-dir /tmp/longmem --preset tiny --full-size

Each command runs in a fresh process (``--workers 2`` decoding processes, as the CLI's default);
its peak resident memory (``ru_maxrss``) is read for the main process and for the largest worker.
Audio files are 16 kHz mono 16-bit WAV of noise, written block by block (3 h: 346 MB on disk).
Activation memory does not depend on the encoder's depth (one block runs at a time), so by
default one block of width 64 keeps the run short; ``--full-size`` uses the preset as it is.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import write_result

SMALL = dict(embed_dim=64, depth=1, num_heads=2)  # memory does not depend on depth


def write_noise(path: Path, seconds: float, block: int = 16000 * 60) -> Path:
    import soundfile as sf

    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    total = int(16000 * seconds)
    with sf.SoundFile(str(path), "w", 16000, 1, subtype="PCM_16") as f:
        for start in range(0, total, block):
            n = min(block, total - start)
            f.write((rng.standard_normal(n) * 0.1).astype(np.float32))
    return path


def make_models(out: Path, preset: str, full_size: bool) -> tuple[Path, Path]:
    import torch

    from audiomaepp import AudioMAE, AudioMAEConfig
    from audiomaepp.finetune import AudioClassifier

    torch.manual_seed(0)
    mae = AudioMAE(AudioMAEConfig.preset(preset, **({} if full_size else SMALL)))
    enc_dir = mae.save_pretrained(out / "encoder")
    clf = AudioClassifier.from_encoder(mae, [f"c{i}" for i in range(10)], "multiclass")
    clf_dir = clf.save_pretrained(out / "classifier")
    return Path(enc_dir), Path(clf_dir)


def child(argv: list[str]) -> None:
    """Run one CLI command here and print its peak memory (MB) as JSON."""
    from audiomaepp.cli.main import main

    start = time.perf_counter()
    rc = main(argv)
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "rc": rc,
                "main_peak_mb": self_mb,
                "worker_peak_mb": workers_mb,
                "seconds": time.perf_counter() - start,
            }
        )
    )


def run(argv: list[str], threads: int) -> dict:
    import os

    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_long_memory", "--child", *argv],
        capture_output=True,
        text=True,
        env=env,
    )
    if res.returncode != 0:
        return {"error": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out-dir", required=True, help="scratch folder (audio files, outputs)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--full-size", action="store_true", help="the preset's real depth and width")
    p.add_argument("--minutes", nargs=2, type=float, default=[20.0, 180.0])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--commands", nargs="+", default=["embed", "predict"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args()
    scratch = Path(args.out_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    enc_dir, clf_dir = make_models(scratch, args.preset, args.full_size)
    files = {m: write_noise(scratch / f"noise_{m:g}min.wav", 60 * m) for m in args.minutes}
    rows = []
    for command in args.commands:
        for dtype in args.dtypes:
            row = {"command": command, "dtype": dtype, "runs": {}}
            for minutes, path in files.items():
                out = scratch / f"{command}_{dtype}_{minutes:g}"
                if command == "embed":
                    cli = ["embed", str(enc_dir), str(path), "--out", str(out)]
                else:
                    cli = ["predict", str(clf_dir), str(path), "--out", str(out) + ".csv"]
                res = run([*cli, "--device", "cpu", "--dtype", dtype], args.threads)
                row["runs"][f"{minutes:g} min"] = res
                print(command, dtype, f"{minutes:g} min", res)
            peaks = [
                r["main_peak_mb"] + r["worker_peak_mb"] for r in row["runs"].values() if "rc" in r
            ]
            if len(peaks) == 2:
                short, long = peaks
                row["long_over_short"] = long / short
                row["within_goal"] = long <= max(1.25 * short, short + 150)
            rows.append(row)
    payload = {
        "settings": vars(args),
        "model": "full preset" if args.full_size else f"{args.preset} with {SMALL}",
        "results": rows,
    }
    print(f"wrote {write_result('long_memory', payload, args.out)}")


if __name__ == "__main__":
    main()
