"""DDP on CPU (gloo) through the real launcher: ``python -m torch.distributed.run``.

Same data split by construction: the shard loader deals its shards to (rank, worker) slots, so
1 process with 2 loader workers and 2-step accumulation of 4 reads exactly the crops that
2 ranks x 4 (no workers) read, and the masking noise is cut from one global draw per step.
Hence 2 ranks must reproduce the single process's per-step losses.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch

from audiomaepp import AudioMAE
from audiomaepp.training import list_checkpoints, pretrain, read_metrics

from .conftest import config_flags, free_port, losses, start, tiny_config, torchrun, wait

STEPS = 6
TIMEOUT = 240  # seconds per launch; a hung rendezvous or collective fails the test instead


@pytest.fixture(scope="module")
def reference(shard_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One process, global batch 8 as 2 micro-steps of 4 fed by 2 loader workers."""
    out = tmp_path_factory.mktemp("single")
    cfg = tiny_config(shard_dir, out / "run", max_steps=STEPS, per_device_batch=4, num_workers=2)
    result = pretrain(cfg)
    assert result.plan["accum_steps"] == 2
    return cfg, result


def _dist_config(shard_dir: Path, out: Path):
    return tiny_config(shard_dir, out, max_steps=STEPS, per_device_batch=4, num_workers=0)


def _check_matches(run_dir: Path, reference) -> None:
    cfg, ref = reference
    got = losses(read_metrics(run_dir))
    want = losses(ref.history)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == pytest.approx(want, abs=1e-5, rel=0), (got, want)
    a, b = AudioMAE.from_pretrained(run_dir / "model"), AudioMAE.from_pretrained(ref.model_dir)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if name.endswith("attn.qkv.bias"):
            # The key bias has an exactly zero gradient (softmax ignores a shift common to all
            # keys), so Adam turns rounding noise into lr-sized steps: bounded by lr * steps, not
            # by 1e-5.
            d = x.numel() // 3
            assert torch.allclose(
                x[d : 2 * d], y[d : 2 * d], atol=cfg.loop.peak_lr() * STEPS, rtol=0
            ), name
            x, y = torch.cat([x[:d], x[2 * d :]]), torch.cat([y[:d], y[2 * d :]])
        assert torch.allclose(x, y, atol=1e-5, rtol=0), name


def test_torchrun_two_ranks_match_one_process(shard_dir, tmp_path, reference):
    cfg = _dist_config(shard_dir, tmp_path / "run")
    log = tmp_path / "log.txt"
    launcher = (
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
    )
    proc = start(torchrun(config_flags(cfg), *launcher), log)
    assert wait(proc, log, TIMEOUT) == 0, log.read_text()[-4000:]
    plan = (tmp_path / "run" / "plan.json").read_text()
    assert '"world_size": 2' in plan and '"accum_steps": 1' in plan
    _check_matches(tmp_path / "run", reference)


def test_two_nodes_c10d_rendezvous(shard_dir, tmp_path, reference):
    """Two launchers, one process each, meeting through a c10d rendezvous as two nodes would."""
    cfg = _dist_config(shard_dir, tmp_path / "run")
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for node in (0, 1):
        launcher = (
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--node-rank",
            str(node),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-id",
            "two-node-test",
        )
        log = tmp_path / f"node{node}.txt"
        procs.append((start(torchrun(config_flags(cfg), *launcher), log), log))
    for proc, log in procs:
        assert wait(proc, log, TIMEOUT) == 0, log.read_text()[-4000:]
    _check_matches(tmp_path / "run", reference)


def test_sigterm_to_torchrun_checkpoints_and_resumes(shard_dir, tmp_path):
    """torchrun forwards SIGTERM to its workers' process groups; the ranks agree on a step,
    rank 0 checkpoints, every rank exits 0, and a second launch continues from there."""
    cfg = _dist_config(shard_dir, tmp_path / "run").replace(max_steps=10_000, num_workers=1)
    log = tmp_path / "log.txt"
    launcher = (
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
    )
    proc = start(torchrun(config_flags(cfg), *launcher), log)
    deadline = time.monotonic() + TIMEOUT
    while len(read_metrics(cfg.out_dir)) < 3:
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, "no steps logged:\n" + log.read_text()[-4000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    wait(proc, log, TIMEOUT)  # torchrun itself reports the signal with a non-zero code
    text = log.read_text()
    assert text.count("SIGTERM received") == 2 and "pretrain stopped" in text, text
    assert "RuntimeError" not in text and "DataLoader worker" not in text, (
        text
    )  # only torchrun complains
    ckpts = list_checkpoints(cfg.out_dir)
    assert len(ckpts) == 1
    stopped = json.loads((ckpts[0] / "state.json").read_text())["step"]
    assert stopped >= 3 and max(losses(read_metrics(cfg.out_dir))) == stopped
    resumed = cfg.replace(resume="auto", stop_after=stopped + 2)
    log2 = tmp_path / "log2.txt"
    launcher = (
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
    )
    proc = start(torchrun(config_flags(resumed) + ["--resume", "auto"], *launcher), log2)
    assert wait(proc, log2, TIMEOUT) == 0, log2.read_text()[-4000:]
    assert sorted(losses(read_metrics(cfg.out_dir))) == list(range(1, stopped + 3))
