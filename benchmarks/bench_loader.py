"""Loader throughput: standardised 200x80 crops per second streamed from shards, per worker.

With ``--clip-s 10`` it writes AudioSet-like shards (10-s clips: 1 001 x 80 float16 log-mels,
~160 KB each) in the current format (version 2: stored statistics, crop-only reads) and, with
``--formats 2 1``, the same clips in the version-1 layout (every member parsed, checked and
standardised whole, as before the index), then streams each through ``make_loader`` with every
``--workers`` count, one after the other in the same run, so the ratio between formats is measured
under the same load. Without ``--clip-s`` it makes shards from the synthetic audio corpus with
``prepare`` (the demo's 4-s clips), as the device script does.

    python -m benchmarks.bench_loader --clip-s 10 --workers 1 2 --formats 2 1 --seconds 15

``--baseline-src DIR`` also streams the version-1 shards with another copy of the package (its
``src`` folder, e.g. ``git archive 84f5fac src | tar -x -C /tmp/old`` for the loader before the
index) in a subprocess, so the old code's rate is measured in the same run.

The main process only counts the batches it receives (no training step), so the figure is what the
workers deliver through the DataLoader: reading, standardising, batching and the hand-over.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from audiomaepp.data import PrepareConfig, ShardDataset, make_loader, prepare_shards
from audiomaepp.data.shards import FORMAT, ShardWriter
from audiomaepp.frontend import SAMPLE_RATE, FrontendConfig, num_frames

from .common import cpu_model, device_info, write_result

N_MELS = FrontendConfig().n_mels


def _clip(rng: np.random.Generator, frames: int) -> np.ndarray:
    """A log-mel-like clip: values around -4 with a spread of 3 (real log-mels span ~[-16, 20])."""
    return (3.0 * rng.standard_normal((frames, N_MELS)) - 4.0).astype(np.float16)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _v1_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def build_synthetic(
    root: Path,
    clips: int,
    clip_s: float,
    shard_mb: float,
    formats: list[int],
    per_shard: int | None = None,
) -> tuple[dict[int, Path], dict]:
    """The same clips as version-2 shards (``root/v2``) and, if asked, version-1 (``root/v1``).

    Shards hold ``per_shard`` clips, or as many as fit in ``shard_mb``.
    Version 1 is written here the way the writer of that version did (``KEY.npy`` + ``KEY.json``
    per clip, no index, no statistics) with a manifest saying ``version: 1``.
    """
    rng = np.random.default_rng(0)
    frames = num_frames(round(clip_s * SAMPLE_RATE))
    pool = [_clip(rng, frames) for _ in range(64)]  # distinct data per clip changes nothing here
    per_shard = per_shard or max(1, int(shard_mb * 1e6 // (frames * N_MELS * 2 + 1024)))
    dirs = {}
    for version in formats:
        out = root / f"v{version}"
        out.mkdir(parents=True)
        shards = []
        for first in range(0, clips, per_shard):
            name = f"shard-{len(shards):06d}.tar"
            keys = [f"clip{i:07d}" for i in range(first, min(clips, first + per_shard))]
            if version == 2:
                writer = ShardWriter(out / name)
                for i, key in enumerate(keys):
                    writer.add(key, pool[(first + i) % len(pool)], {"frames": frames})
                size = writer.commit()
                entry = {"index": list(writer.index)}
            else:
                with tarfile.open(out / name, "w", format=tarfile.GNU_FORMAT) as tar:
                    for i, key in enumerate(keys):
                        _v1_member(tar, f"{key}.npy", _npy(pool[(first + i) % len(pool)]))
                        _v1_member(tar, f"{key}.json", json.dumps({"frames": frames}).encode())
                size, entry = (out / name).stat().st_size, {}
            shards.append({"name": name, "clips": len(keys), "bytes": size, **entry})
        manifest = {
            "format": FORMAT,
            "version": version,
            "clips": clips,
            "shards": shards,
            "skipped": [],
        }
        (out / "manifest.json").write_text(json.dumps(manifest))
        dirs[version] = out
    return dirs, {"clip_frames": frames, "clips": clips, "clips_per_shard": per_shard}


def build_corpus_shards(root: Path, clips: int, workers: int) -> tuple[Path, dict]:
    """The demo's synthetic audio corpus, prepared into shards (the end-to-end path)."""
    from audiomaepp.synth import CorpusConfig, generate_corpus

    t0 = time.perf_counter()
    corpus = generate_corpus(
        root / "corpus", CorpusConfig(n_pool=clips, n_per_task=12), workers=workers
    )
    t1 = time.perf_counter()
    report = prepare_shards(
        [corpus.pool_dir],
        root / "shards",
        PrepareConfig(workers=workers, shard_size_mb=64),
        progress=False,
    )
    t2 = time.perf_counter()
    return root / "shards", {
        "generate_s": t1 - t0,
        "prepare_s": t2 - t1,
        "prepare_files_per_s": report.files_per_s,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream_rate(
    shards: Path, workers: int, batch_size: int, seconds: float, crops_per_clip: int
) -> dict:
    """Crops per second the main process receives from ``make_loader`` with ``workers``.

    Also the crops per CPU-second of the workers: what one worker gives with a core to itself, a
    figure a busy host (other jobs on the same cores) lowers far less than the wall-clock rate.
    """
    ds = ShardDataset.from_dir(shards, samples_per_epoch=10**9, crops_per_clip=crops_per_clip)
    loader = make_loader(ds, batch_size, num_workers=workers, pin_memory=False)
    it = iter(loader)
    for _ in range(2 * max(1, workers)):
        next(it)  # workers started, shards opened, first batches through
    pids = [w.pid for w in getattr(it, "_workers", [])]  # the DataLoader's worker processes
    worker_cpu0 = sum(_cpu_seconds(pid) for pid in pids)
    n, start, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        n += next(it).shape[0]
    wall = time.perf_counter() - start
    main_cpu = time.process_time() - cpu0
    worker_cpu = sum(_cpu_seconds(pid) for pid in pids) - worker_cpu0
    del it, loader
    rate = n / wall
    return {
        "workers": workers,
        "crops_per_clip": crops_per_clip,
        "crops": n,
        "seconds": wall,
        "crops_per_s": rate,
        "crops_per_s_per_worker": rate / max(1, workers),
        "worker_cpu_s": worker_cpu,
        "crops_per_worker_cpu_s": n / worker_cpu if worker_cpu > 0 else None,
        "main_process_cpu_s": main_cpu,
    }


def _describe(row: dict) -> str:
    return (
        f"{row['crops_per_s']:.0f} crops/s, {row['crops_per_s_per_worker']:.0f} per worker, "
        f"{row['crops_per_worker_cpu_s'] or 0:.0f} per worker CPU-second"
    )


def _baseline(args: argparse.Namespace, shards: Path, workers: int, tmp: str) -> dict:
    """This benchmark on ``shards`` with the package at ``args.baseline_src``, in a subprocess."""
    out = Path(tmp, f"baseline-{workers}")
    cmd = [sys.executable, "-m", "benchmarks.bench_loader", "--shards", str(shards)]
    cmd += ["--workers", str(workers), "--seconds", str(args.seconds), "--out", str(out)]
    cmd += ["--batch-size", str(args.batch_size)]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([args.baseline_src, str(root)]))
    subprocess.run(cmd, check=True, env=env, cwd=root, stdout=subprocess.DEVNULL)
    return json.loads(next(out.glob("*.json")).read_text())["results"][0]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", default=None, help="existing shard folder (default: make one)")
    p.add_argument(
        "--clip-s",
        type=float,
        default=None,
        help="make synthetic shards of clips this long (10: AudioSet); default: the audio corpus",
    )
    p.add_argument("--clips", type=int, default=2000, help="clips to make")
    p.add_argument("--shard-mb", type=float, default=64.0, help="shard size for --clip-s")
    p.add_argument(
        "--formats",
        type=int,
        nargs="+",
        default=[2],
        help="shard format versions to measure with --clip-s (2: current, 1: the old layout)",
    )
    p.add_argument("--workers", type=int, nargs="+", default=[min(16, os.cpu_count() or 1)])
    p.add_argument("--crops-per-clip", type=int, nargs="+", default=[1])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=20.0, help="how long to stream each setting")
    p.add_argument(
        "--baseline-src",
        default=None,
        help="src folder of an older audiomaepp to measure on the version-1 shards too",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the main process only receives; workers use one thread each
    load_before = os.getloadavg()
    rows, prep = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.shards:
            dirs = {0: Path(args.shards)}
        elif args.clip_s is not None:
            dirs, prep = build_synthetic(
                Path(tmp), args.clips, args.clip_s, args.shard_mb, args.formats
            )
        else:
            shards, prep = build_corpus_shards(Path(tmp), args.clips, max(args.workers))
            dirs = {2: shards}
        if args.baseline_src and 1 in dirs:
            for workers in args.workers:
                row = {**_baseline(args, dirs[1], workers, tmp), "format": "1, baseline code"}
                rows.append(row)
                print(f"baseline code, format 1, {workers} worker(s): {_describe(row)}", flush=True)
        for version, shards in dirs.items():
            for cpc in args.crops_per_clip:
                for workers in args.workers:
                    row = {
                        "format": version or "given",
                        **stream_rate(shards, workers, args.batch_size, args.seconds, cpc),
                    }
                    rows.append(row)
                    print(
                        f"format {row['format']}, {workers} worker(s), crops_per_clip {cpc}: "
                        f"{_describe(row)}",
                        flush=True,
                    )
    env = {**device_info(torch.device("cpu")), "cpu_model": cpu_model()}
    env["load_average_before_after"] = [load_before[0], os.getloadavg()[0]]
    write_result(
        "loader" if args.clip_s is None else f"loader_clip{args.clip_s:g}s",
        {"settings": vars(args), "env": env, "data": prep, "results": rows},
        args.out,
    )
    return {"results": rows, "data": prep}


if __name__ == "__main__":
    main()
