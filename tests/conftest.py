"""Shared fixtures and helpers: the conformance checkpoint (read from ../shared, never copied),
tiny model and training configs, small log-mel shards, and CLI subprocesses that a timeout ends.

Fixtures are found by pytest; tests import the plain helpers with ``from .conftest import ...``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO.parent / "shared" / "conformance" / "official_tiny64"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    if not (CONFORMANCE / "checkpoint-99.pth").is_file():
        pytest.fail(
            f"conformance files not found at {CONFORMANCE} (expected ../shared beside the repo)"
        )
    return CONFORMANCE


@pytest.fixture(scope="session")
def reference(conformance_dir: Path) -> dict[str, np.ndarray]:
    with np.load(conformance_dir / "reference.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def converted_dir(conformance_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conformance checkpoint converted with its release config."""
    from audiomaepp.model.release import convert_release

    out = tmp_path_factory.mktemp("official_tiny64")
    convert_release(
        conformance_dir / "checkpoint-99.pth", out, release_config=conformance_dir / "config.json"
    )
    return out


# A ~30 k-parameter model: 2+1 blocks of width 32 (fast enough for dozens of CPU steps per test).
MICRO = dict(
    embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2
)


def micro_config(**overrides):
    """A very small model for fast CPU tests (:data:`MICRO` on the tiny preset)."""
    from audiomaepp import AudioMAEConfig

    return AudioMAEConfig.preset("tiny", **{**MICRO, **overrides})


# ---- training data and runs ----------------------------------------------------------------------
def write_clips(folder: Path, n: int = 24, seconds: float = 2.5, seed: int = 0) -> Path:
    """``n`` wav files of tones + noise with varied pitch and level (learnable structure)."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    for i in range(n):
        f0 = 150 * 2 ** (rng.uniform(0, 4))
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 4))
        env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)
        x = 0.2 * tone * env + 0.02 * rng.standard_normal(t.size)
        sf.write(folder / f"clip{i:03d}.wav", x.astype(np.float32), 16000)
    return folder


def make_shards(root: Path, n: int = 24) -> Path:
    """Log-mel shards (+ manifest) of :func:`write_clips`, via ``audiomaepp.data.prepare``."""
    from audiomaepp.data.prepare import PrepareConfig, prepare_shards

    audio = write_clips(root / "audio", n)
    out = root / "shards"
    prepare_shards([audio], out, PrepareConfig(workers=1, shard_size_mb=0.3), progress=False)
    return out


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("train_data"))


def tiny_config(data: Path | str, out: Path | str, **overrides: Any):
    """A TrainConfig for CPU tests: micro model, batch 8, every step logged, nothing optional."""
    from audiomaepp.training import TrainConfig

    base = dict(
        preset="tiny",
        model=dict(MICRO),
        data=str(data),
        out_dir=str(out),
        batch_size=8,
        samples_per_epoch=16,
        num_workers=0,
        shuffle_buffer=16,
        max_steps=8,
        warmup_steps=2,
        lr=2e-3,
        log_every=1,
        save_every=0,
        viz_every=0,
        progress=False,
        tensorboard=False,
        device="cpu",
        seed=0,
    )
    return TrainConfig.from_dict({**base, **overrides})


def config_flags(cfg) -> list[str]:
    """The CLI flags equivalent to a TrainConfig (via a --config JSON would hide CLI parsing)."""
    flags = ["--preset", cfg.preset, "--data", cfg.data, "--out", cfg.out_dir]
    for key, value in cfg.model.items():
        flags += ["--model-set", f"{key}={json.dumps(value)}"]
    simple = [
        "batch_size",
        "per_device_batch",
        "samples_per_epoch",
        "num_workers",
        "shuffle_buffer",
        "max_steps",
        "warmup_steps",
        "lr",
        "log_every",
        "save_every",
        "viz_every",
        "seed",
        "keep_last",
        "stop_after",
        "device",
    ]
    for key in simple:
        value = getattr(cfg.loop, key) if key in vars(cfg.loop) else getattr(cfg, key)
        if value is not None:
            flags += ["--" + key.replace("_", "-"), str(value)]
    flags += ["--no-progress", "--no-tensorboard"]
    return flags


def losses(records: list[dict[str, Any]]) -> dict[int, float]:
    """``{step: loss}`` from metrics records."""
    return {r["step"]: r["loss"] for r in records}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", **extra})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def start(cmd: list[str], log: Path, **extra_env: str) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so a timeout can end it and all its children)."""
    return subprocess.Popen(
        cmd,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,  # noqa: SIM115
        env=child_env(**extra_env),
        start_new_session=True,
    )


def wait(proc: subprocess.Popen, log: Path, timeout: float) -> int:
    """Wait for ``proc``; on timeout kill its process group and fail the test with its log."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{proc.args} did not finish in {timeout} s; log:\n{log.read_text()[-4000:]}")


def cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "audiomaepp.cli.main", "pretrain", *args]


def local_torchrun(*target: str, nproc: int = 2) -> list[str]:
    """``torch.distributed.run`` with ``nproc`` ranks on this host (a free port), then ``target``
    (``-m module args...`` or ``script args...``)."""
    launcher = ["--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1"]
    launcher += ["--master-port", str(free_port())]
    return [sys.executable, "-m", "torch.distributed.run", *launcher, *target]


def torchrun(args: list[str], *launcher: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *launcher,
        "-m",
        "audiomaepp.cli.main",
        "pretrain",
        *args,
    ]
