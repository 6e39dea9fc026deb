"""Fault injection in training: SIGKILL, disk full on save, malformed checkpoints, changed recipes,
ranks that disagree. Each test names the fault it injects and asserts what is kept.

All runs use the ~30 k-parameter model of ``conftest.py`` on CPU, a few steps each.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from audiomaepp import AudioMAE
from audiomaepp.errors import CheckpointError
from audiomaepp.training import TrainConfig, list_checkpoints, pretrain, read_metrics
from audiomaepp.training import checkpoint as ckpt
from audiomaepp.training.guard import NonFiniteGuard

from .conftest import cli, config_flags, free_port, losses, start, tiny_config, wait

STEPS = 10


@pytest.fixture(scope="module")
def reference(shard_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted run: the per-step losses every interrupted-and-resumed run must match."""
    cfg = tiny_config(shard_dir, tmp_path_factory.mktemp("ref") / "run", max_steps=STEPS)
    return pretrain(cfg)


# ---- SIGKILL at a random step --------------------------------------------------------------------
def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_losses(
    shard_dir, tmp_path, reference
):
    """Fault: SIGKILL (no handler can run) the whole CLI run at a random step after a checkpoint.

    Kept: the last complete checkpoint; a resumed run redoes the lost steps and its losses equal
    the uninterrupted run's at every step.
    """
    kill_at = random.Random().randint(3, STEPS - 2)
    cfg = tiny_config(shard_dir, tmp_path / "run", max_steps=STEPS, save_every=2, keep_last=0)
    log = tmp_path / "log.txt"
    proc = start(cli([*config_flags(cfg), "--max-steps", str(STEPS)]), log)
    deadline = time.monotonic() + 120
    while not read_metrics(cfg.out_dir) or max(losses(read_metrics(cfg.out_dir))) < kill_at:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list_checkpoints(cfg.out_dir), f"no checkpoint before the kill at step {kill_at}"
    resumed = pretrain(cfg.replace(resume="auto"))
    assert resumed.finished, kill_at
    got = losses(read_metrics(cfg.out_dir))
    assert sorted(got) == list(range(1, STEPS + 1)), (kill_at, sorted(got))
    assert got == pytest.approx(losses(reference.history), abs=1e-6, rel=0), kill_at


# ---- disk full on save ---------------------------------------------------------------------------
def _disk_full_from(call: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the ``call``-th and later checkpoint writes fail half-way with ENOSPC."""
    calls, real = [], ckpt.save_file

    def save_file(tensors, filename, metadata=None):
        calls.append(1)
        if len([c for c in calls]) >= call:
            Path(filename).write_bytes(b"\0" * 100)  # half a file, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device (simulated)", filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    return calls


def test_disk_full_on_save_keeps_the_last_checkpoint_and_resumes(
    shard_dir, tmp_path, reference, monkeypatch
):
    """Fault: the disk fills up while the second checkpoint is written (ENOSPC).

    Kept: the error reaches the caller (the run does not go on without checkpoints), no partial
    checkpoint folder is left, the first checkpoint is intact, and resuming from it reproduces
    the uninterrupted run.
    """
    cfg = tiny_config(shard_dir, tmp_path / "run", max_steps=STEPS, save_every=3, keep_last=0)
    _disk_full_from(3, monkeypatch)  # each save writes 2 safetensors files: the 2nd save fails
    with pytest.raises(OSError, match="No space left"):
        pretrain(cfg)
    monkeypatch.undo()
    root = Path(cfg.out_dir) / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step_00000003"]
    resumed = pretrain(cfg.replace(resume="auto"))
    assert resumed.finished
    assert losses(read_metrics(cfg.out_dir)) == pytest.approx(
        losses(reference.history), abs=1e-6, rel=0
    )


_RANK_SCRIPT = r"""
import errno, json, sys
from audiomaepp.training import TrainConfig, pretrain
from audiomaepp.training import checkpoint as ckpt, trainer

scenario, cfg = sys.argv[1], TrainConfig.from_json(sys.argv[2])
rank = int(__import__("os").environ["RANK"])
if scenario == "disk_full" and rank == 0:
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")
    ckpt.save_checkpoint = full
if scenario == "lagging_fs" and rank == 1:
    # this node's view of the shared folder lags: it sees only the oldest checkpoint
    ckpt.resolve_resume = lambda resume, run_dir: ckpt.list_checkpoints(run_dir)[0]
    ckpt.latest_checkpoint = lambda run_dir: ckpt.list_checkpoints(run_dir)[0]
real_resume = trainer.Trainer.resume
def resume(self, path):
    real_resume(self, path)
    print(f"RANK {rank} RESUMED {self.step}", flush=True)
trainer.Trainer.resume = resume
result = pretrain(cfg)
print(f"RANK {rank} DONE {result.step}", flush=True)
"""


def _launch_ranks(tmp_path: Path, scenario: str, cfg: TrainConfig) -> list[tuple[int, str]]:
    """Two ranks started directly (as ``srun`` does: no torchrun agent to kill the survivors)."""
    script, cfg_file = tmp_path / "rank.py", tmp_path / f"{scenario}.json"
    script.write_text(_RANK_SCRIPT)
    cfg_file.write_text(cfg.to_json())
    port, procs = str(free_port()), []
    for rank in range(2):
        env = dict(
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        log = tmp_path / f"{scenario}-rank{rank}.txt"
        procs.append(
            (start([sys.executable, str(script), scenario, str(cfg_file)], log, **env), log)
        )
    return [(wait(p, log, timeout=120), log.read_text()) for p, log in procs]


def test_failed_save_on_rank0_ends_every_rank_promptly(shard_dir, tmp_path):
    """Fault: rank 0 cannot write its checkpoint (ENOSPC); the collective timeout is 30 minutes.

    Kept: rank 0 exits with the disk error and rank 1 exits at once saying rank 0 failed, rather
    than waiting for rank 0 in the next collective.
    """
    cfg = tiny_config(
        shard_dir,
        tmp_path / "run",
        max_steps=6,
        save_every=2,
        per_device_batch=4,
        dist_timeout_s=1800,
    )
    (rc0, log0), (rc1, log1) = _launch_ranks(tmp_path, "disk_full", cfg)
    assert rc0 != 0 and "No space left on device" in log0, log0[-3000:]
    assert rc1 != 0 and "rank 0 failed while writing the checkpoint of step 2" in log1, log1[-3000:]


def test_ranks_resume_from_the_checkpoint_rank0_chose(shard_dir, tmp_path):
    """Fault: one node's view of the shared run folder lags (it sees an older checkpoint).

    Kept: rank 0 picks the checkpoint and broadcasts it, so both ranks resume at the same step
    and finish together (before: rank 1 silently resumed from the older one).
    """
    cfg = tiny_config(
        shard_dir,
        tmp_path / "run",
        max_steps=6,
        save_every=2,
        keep_last=0,
        per_device_batch=4,
        stop_after=4,
    )
    pretrain(cfg.replace(per_device_batch=None))  # one process writes step 2 and step 4
    assert [p.name for p in list_checkpoints(cfg.out_dir)] == ["step_00000002", "step_00000004"]
    results = _launch_ranks(tmp_path, "lagging_fs", cfg.replace(stop_after=None, resume="auto"))
    for rank, (rc, log) in enumerate(results):
        assert rc == 0, log[-3000:]
        assert f"RANK {rank} RESUMED 4" in log and f"RANK {rank} DONE 6" in log, log[-3000:]


# ---- malformed checkpoint state / changed recipe -------------------------------------------------
@pytest.fixture(scope="module")
def one_checkpoint(shard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    cfg = tiny_config(shard_dir, tmp_path_factory.mktemp("ck") / "run", max_steps=4, stop_after=2)
    pretrain(cfg)
    return cfg.replace(stop_after=None, resume="auto")


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d.pop("step"), "step"),
        (lambda d: d.update(step="seven"), "step"),
        (lambda d: d.update(peak_lr=None), "peak_lr"),
        (lambda d: d.update(betas=[0.9]), "betas"),
        (lambda d: d.update(model_config=[]), "model_config"),
        (lambda d: d.pop("optimizer"), "optimizer"),
        (lambda d: d["optimizer"].pop("param_groups"), "param_groups"),
        (lambda d: d["rng"].pop("numpy"), "numpy"),
    ],
    ids=[
        "no-step",
        "step-type",
        "peak_lr-null",
        "betas-short",
        "model_config-type",
        "no-optimizer",
        "no-param-groups",
        "no-rng-numpy",
    ],
)
def test_malformed_state_json_is_a_checkpoint_error_naming_file_and_field(
    one_checkpoint, tmp_path, edit, field
):
    """Fault: a hand-edited or truncated ``state.json``. Kept: a CheckpointError naming both."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(one_checkpoint.out_dir, run)
    state = list_checkpoints(run)[-1] / "state.json"
    doc = json.loads(state.read_text())
    edit(doc)
    state.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError) as err:
        pretrain(one_checkpoint.replace(out_dir=str(run)))
    assert str(state) in str(err.value) and field in str(err.value)


@pytest.mark.parametrize(
    "change",
    [
        dict(min_lr=1e-5),
        dict(weight_decay=0.1),
        dict(betas=(0.9, 0.999)),
        dict(eps=1e-6),
        dict(clip_grad=1.0),
        dict(precision="bf16"),
    ],
    ids=lambda c: next(iter(c)),
)
def test_resume_refuses_a_changed_optimizer_or_precision_field(one_checkpoint, change):
    """Fault: resuming with a changed flag that the saved state used to override silently."""
    name = next(iter(change))
    with pytest.raises(CheckpointError, match=name):
        pretrain(one_checkpoint.replace(**change))


# ---- the non-finite policy, in isolation ---------------------------------------------------------
@pytest.mark.parametrize("path", ["plain", "fused", "fp16-scaler"])
def test_guard_skips_a_nonfinite_step_on_every_precision_path(path):
    """Fault: a NaN gradient. Kept: weights and AdamW state unchanged, the step counted as bad."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, fused=path == "fused")
    scaler = torch.amp.GradScaler("cpu", enabled=path == "fp16-scaler", init_scale=1.0)
    guard = NonFiniteGuard(torch.device("cpu"), limit=2, scaler=scaler, fused=path == "fused")

    def one_step(poison: bool) -> torch.Tensor:
        loss = lin(torch.randn(5, 4)).pow(2).mean() * (float("nan") if poison else 1.0)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in lin.parameters()]))
        bad = guard.is_bad(loss.detach(), norm)
        guard.step(opt, bad)
        opt.zero_grad(set_to_none=True)
        return bad

    assert not bool(one_step(False))
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    adam_steps = [float(s["step"]) for s in opt.state.values()]
    assert bool(one_step(True))
    assert all(torch.equal(before[k], v) for k, v in lin.state_dict().items())
    assert [float(s["step"]) for s in opt.state.values()] == adam_steps
    assert guard.state()["run"] == 1
    assert guard.at_log(2, lambda t: t, report=False) == 1
    one_step(True)
    with pytest.raises(Exception, match="2 consecutive optimizer steps"):
        guard.at_log(3, lambda t: t, report=False)


def test_export_replaces_model_dir_as_one_unit(shard_dir, tmp_path, monkeypatch):
    """Fault: the export is interrupted after the weights were written (crash before the config).

    Kept: ``RUN_DIR/model`` of the previous export stays whole (weights and config of one save)."""
    cfg = tiny_config(shard_dir, tmp_path / "run", max_steps=2)
    pretrain(cfg)
    model_dir = Path(cfg.out_dir) / "model"
    old = (model_dir / "model.safetensors").read_bytes(), (model_dir / "config.json").read_bytes()
    from audiomaepp.model import io as model_io

    real = model_io.atomic_write_bytes

    def crash(path, data):
        if "checkpoints" in Path(path).parts:  # checkpoints are written as usual; the export fails
            return real(path, data)
        raise OSError(errno.EIO, "simulated crash while writing config.json")

    monkeypatch.setattr(model_io, "atomic_write_bytes", crash)
    with pytest.raises(OSError, match="simulated crash"):
        pretrain(cfg.replace(max_steps=3, warmup_steps=1, out_dir=str(tmp_path / "run2")))
    monkeypatch.undo()
    # the second run's folder has no half model; the first run's model is untouched
    assert not (tmp_path / "run2" / "model").exists()
    assert old == (
        (model_dir / "model.safetensors").read_bytes(),
        (model_dir / "config.json").read_bytes(),
    )
    assert AudioMAE.from_pretrained(model_dir) is not None
