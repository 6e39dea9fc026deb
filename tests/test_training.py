"""Pretraining on CPU: schedule, optimizer groups, loop, checkpoints, resume, faults, CLI.

All runs use a ~30 k-parameter model on small log-mel shards, so each takes seconds.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from audiomaepp import AudioMAE, AudioMAEConfig
from audiomaepp.errors import CheckpointError
from audiomaepp.training import (
    LoopConfig,
    NonFiniteLossError,
    TrainConfig,
    list_checkpoints,
    lr_at,
    param_groups,
    plan_run,
    pretrain,
    read_metrics,
)

from .conftest import MICRO, cli, config_flags, losses, start, tiny_config, wait


# ---- schedule and optimizer recipe ---------------------------------------------------------------
def test_lr_schedule_warmup_cosine_and_end():
    peak, warm, total = 6e-4, 10, 110
    assert lr_at(0, peak, warm, total) == 0.0
    assert lr_at(5, peak, warm, total) == pytest.approx(peak / 2)
    assert [lr_at(s, peak, warm, total) for s in range(warm)] == pytest.approx(
        [peak * s / warm for s in range(warm)]
    )
    assert lr_at(warm, peak, warm, total) == pytest.approx(peak)
    assert lr_at(60, peak, warm, total) == pytest.approx(peak / 2)  # half-way through the cosine
    assert lr_at(total, peak, warm, total) == 0.0
    assert 0 < lr_at(total - 1, peak, warm, total) < 1e-3 * peak
    after = [lr_at(s, peak, warm, total) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    assert (
        lr_at(100, peak, warm, total, min_lr=1e-5) > 1e-5
        and lr_at(total, peak, warm, total, 1e-5) == 1e-5
    )


def test_recipe_defaults_and_plan():
    cfg = TrainConfig().loop
    assert (
        cfg.epochs,
        cfg.warmup_epochs,
        cfg.batch_size,
        cfg.betas,
        cfg.weight_decay,
        cfg.min_lr,
    ) == (100, 10.0, 1024, (0.9, 0.95), 0.05, 0.0)
    assert cfg.peak_lr() == pytest.approx(1.5e-4 * 1024 / 256)
    assert LoopConfig(batch_size=512, blr=1e-4).peak_lr() == pytest.approx(2e-4)
    assert LoopConfig(lr=1e-3).peak_lr() == 1e-3
    plan = plan_run(cfg, torch.device("cpu"), world_size=8, samples_per_epoch=2_000_000)
    assert (plan.per_device_batch, plan.accum_steps, plan.steps_per_epoch) == (128, 1, 1953)
    assert (plan.total_steps, plan.warmup_steps) == (195_300, 19_530)
    assert (plan.precision, plan.compile, plan.fused_adamw) == ("fp32", False, False)
    plan = plan_run(
        cfg.replace(per_device_batch=64, max_steps=500), torch.device("cpu"), 4, 2_000_000
    )
    assert (plan.accum_steps, plan.total_steps, plan.warmup_steps) == (
        4,
        500,
        50,
    )  # warm-up keeps its 10 % share
    with pytest.raises(ValueError, match="multiple"):
        plan_run(cfg.replace(per_device_batch=100), torch.device("cpu"), 8, 2_000_000)
    with pytest.raises(ValueError, match="smaller than the global batch"):
        plan_run(cfg, torch.device("cpu"), 1, 1000)


@pytest.mark.parametrize("swiglu_norm", ["ln2", "ln3"])
def test_weight_decay_groups(swiglu_norm):
    model = AudioMAE(AudioMAEConfig.preset("tiny", swiglu_norm=swiglu_norm, **MICRO))
    decay, plain = param_groups(model, 0.05)
    assert (decay["weight_decay"], plain["weight_decay"]) == (0.05, 0.0)
    names = set(decay["names"]) | set(plain["names"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {"encoder.pos_embed", "decoder.pos_embed"} <= frozen and not names & frozen
    assert any(".norm3." in n for n in frozen) == (swiglu_norm == "ln2")
    assert names == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, p in zip(plain["names"], plain["params"], strict=True):
        assert p.ndim == 1 or name.endswith(".bias"), name
    for name, p in zip(decay["names"], decay["params"], strict=True):
        assert p.ndim >= 2 and not name.endswith(".bias"), name
    assert {"encoder.cls_token", "decoder.mask_token", "encoder.patch_embed.proj.weight"} <= set(
        decay["names"]
    )
    assert {"encoder.patch_embed.proj.bias", "encoder.norm.weight"} <= set(plain["names"])


# ---- a full short run ----------------------------------------------------------------------------
def _assert_no_pickle(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            assert f.suffix in (".safetensors", ".json"), f
            head = f.read_bytes()[:2]
            assert head[:1] != b"\x80" and head != b"PK", (
                f"{f} looks like a pickle / torch.save zip"
            )
            if f.suffix == ".json":
                json.loads(f.read_text())


def test_run_learns_checkpoints_exports(shard_dir, tmp_path):
    cfg = tiny_config(
        shard_dir, tmp_path / "run", max_steps=30, save_every=5, keep_last=2, viz_every=15
    )
    result = pretrain(cfg)
    assert result.finished and not result.interrupted and result.step == 30
    curve = losses(read_metrics(cfg.out_dir))
    assert sorted(curve) == list(range(1, 31))
    first, last = curve[1], sum(curve[s] for s in (28, 29, 30)) / 3
    assert last < first - 0.2, f"loss did not fall: {first:.3f} -> {last:.3f}"
    rec = read_metrics(cfg.out_dir)[-1]
    assert (
        rec["mfu"] is None and rec["samples_per_s"] > 0 and rec["lr"] < 1e-4 and rec["skipped"] == 0
    )
    assert {"step", "epoch", "loss", "lr", "samples_per_s", "mfu", "grad_norm", "time"} <= set(rec)
    # keep-last-K: saves at 5, 10, ..., 30; the last two remain. No pickle anywhere.
    assert [p.name for p in list_checkpoints(cfg.out_dir)] == ["step_00000025", "step_00000030"]
    _assert_no_pickle(Path(cfg.out_dir) / "checkpoints")
    assert sorted(p.name for p in (Path(cfg.out_dir) / "viz").iterdir()) == [
        "step_00000015.png",
        "step_00000030.png",
    ]
    # The exported model (and any checkpoint) loads with from_pretrained and is the trained model.
    exported = AudioMAE.from_pretrained(result.model_dir)
    from_ckpt = AudioMAE.from_pretrained(result.checkpoint)
    assert exported.config == cfg.model_config()
    for (name, a), b in zip(
        exported.state_dict().items(), from_ckpt.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    fresh = AudioMAE(cfg.model_config())
    assert not torch.equal(
        exported.encoder.patch_embed.proj.weight, fresh.encoder.patch_embed.proj.weight
    )


def test_gradient_accumulation_matches_full_batch(shard_dir, tmp_path):
    runs = {}
    for per_device in (8, 4, 2):
        cfg = tiny_config(
            shard_dir, tmp_path / f"p{per_device}", per_device_batch=per_device, max_steps=4
        )
        result = pretrain(cfg)
        assert result.plan["accum_steps"] == 8 // per_device
        runs[per_device] = losses(result.history)
    for per_device in (4, 2):
        for step, loss in runs[8].items():
            assert runs[per_device][step] == pytest.approx(loss, abs=1e-5), (per_device, step)


# ---- resume --------------------------------------------------------------------------------------
def test_stop_and_resume_is_bit_exact(shard_dir, tmp_path):
    # 12 steps over 1.5 epochs, so the resume point (7) sits mid-epoch.
    ref_cfg = tiny_config(shard_dir, tmp_path / "ref", max_steps=12)
    ref = pretrain(ref_cfg)
    cfg = tiny_config(shard_dir, tmp_path / "cut", max_steps=12, stop_after=7)
    first = pretrain(cfg)
    assert first.interrupted and not first.finished and first.step == 7 and first.model_dir is None
    assert [p.name for p in list_checkpoints(cfg.out_dir)] == ["step_00000007"]
    second = pretrain(cfg.replace(stop_after=None, resume="auto"))
    assert second.finished and second.step == 12
    assert sorted(losses(second.history)) == list(range(8, 13))
    assert losses(read_metrics(cfg.out_dir)) == pytest.approx(losses(ref.history), abs=1e-6, rel=0)
    a, b = AudioMAE.from_pretrained(ref.model_dir), AudioMAE.from_pretrained(second.model_dir)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-6, rtol=0), name


def test_resume_refuses_other_global_batch(shard_dir, tmp_path):
    cfg = tiny_config(shard_dir, tmp_path / "run", max_steps=4, stop_after=2)
    pretrain(cfg)
    with pytest.raises(CheckpointError, match="global_batch"):
        pretrain(cfg.replace(batch_size=16, samples_per_epoch=32, resume="auto", stop_after=None))


def test_sigterm_checkpoints_exits_0_and_resumes_exactly(shard_dir, tmp_path):
    """SIGTERM to a CLI run's whole process group (main + 2 loader workers), as a scheduler or
    Ctrl-C would: checkpoint at the next step, exit 0; resume matches an uninterrupted run."""
    cfg = tiny_config(shard_dir, tmp_path / "run", max_steps=10_000, warmup_steps=2, num_workers=2)
    log = tmp_path / "log.txt"
    proc = start(cli(config_flags(cfg)), log)
    deadline = time.monotonic() + 120
    while len(read_metrics(cfg.out_dir)) < 3:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the run logged no steps in 120 s:\n" + log.read_text()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    assert wait(proc, log, timeout=60) == 0, log.read_text()
    assert log.read_text().count("SIGTERM received") == 1, log.read_text()
    ckpts = list_checkpoints(cfg.out_dir)
    assert len(ckpts) == 1
    stopped_at = json.loads((ckpts[0] / "state.json").read_text())["step"]
    assert stopped_at >= 3 and max(losses(read_metrics(cfg.out_dir))) == stopped_at
    result = json.loads((Path(cfg.out_dir) / "result.json").read_text())
    assert result["interrupted"] and not result["finished"]
    # Resume (in process) for 3 more steps; compare with an uninterrupted run of the same length.
    more = pretrain(cfg.replace(resume="auto", stop_after=stopped_at + 3))
    assert sorted(losses(more.history)) == [stopped_at + 1, stopped_at + 2, stopped_at + 3]
    ref = pretrain(cfg.replace(out_dir=str(tmp_path / "ref"), stop_after=stopped_at + 3))
    assert losses(read_metrics(cfg.out_dir)) == pytest.approx(losses(ref.history), abs=1e-6, rel=0)


# ---- non-finite losses ---------------------------------------------------------------------------
class FlakyMAE(AudioMAE):
    """Returns a NaN loss on the given forward calls (call i = step i without accumulation)."""

    def __init__(self, config: AudioMAEConfig, bad_calls: set[int]) -> None:
        super().__init__(config)
        self.bad_calls, self.calls = bad_calls, 0

    def loss(self, x, pred, mask):
        value = super().loss(x, pred, mask)
        call, self.calls = self.calls, self.calls + 1
        return value * math.nan if call in self.bad_calls else value


@pytest.mark.parametrize("fused", [False, True], ids=["host-skip", "fused-device-skip"])
def test_nonfinite_steps_are_skipped(shard_dir, tmp_path, fused):
    cfg = tiny_config(
        shard_dir, tmp_path / "run", max_steps=6, save_every=1, keep_last=0, fused_adamw=fused
    )
    result = pretrain(
        cfg, model=FlakyMAE(cfg.model_config(), bad_calls={2, 3})
    )  # steps 3 and 4 (1-based)
    assert result.finished
    records = {r["step"]: r for r in read_metrics(cfg.out_dir)}
    assert [records[s]["skipped"] for s in range(1, 7)] == [0, 0, 1, 1, 0, 0]
    assert records[3]["loss"] is None and math.isfinite(records[5]["loss"])  # NaN is logged as null
    weights = {
        p.name: AudioMAE.from_pretrained(p).state_dict() for p in list_checkpoints(cfg.out_dir)
    }
    unchanged = [
        torch.equal(weights["step_00000002"][k], weights["step_00000004"][k])
        for k in weights["step_00000002"]
    ]
    assert all(unchanged), "a non-finite step updated the model"
    w2, w5 = weights["step_00000002"], weights["step_00000005"]
    assert not torch.equal(
        w2["encoder.patch_embed.proj.weight"], w5["encoder.patch_embed.proj.weight"]
    )
    from safetensors.torch import load_file

    opt = load_file(
        str(tmp_path / "run" / "checkpoints" / "step_00000004" / "optimizer.safetensors")
    )
    assert (
        float(opt["encoder.patch_embed.proj.weight/step"]) == 2.0
    )  # AdamW's own step count skipped too


@pytest.mark.parametrize("fused", [False, True], ids=["host-skip", "fused-device-skip"])
def test_nonfinite_streak_stops_with_clear_error(shard_dir, tmp_path, fused):
    cfg = tiny_config(shard_dir, tmp_path / "run", max_steps=20, max_nonfinite=3, fused_adamw=fused)
    model = FlakyMAE(cfg.model_config(), bad_calls=set(range(4, 100)))
    with pytest.raises(NonFiniteLossError, match="3 consecutive optimizer steps up to step 7"):
        pretrain(cfg, model=model)


# ---- command line --------------------------------------------------------------------------------
def test_cli_config_file_and_flag_overrides(tmp_path, capsys):
    from audiomaepp.cli.main import build_parser, main
    from audiomaepp.cli.pretrain import build_config

    file = tmp_path / "cfg.json"
    file.write_text(
        json.dumps(
            {"preset": "small", "epochs": 7, "batch_size": 512, "model": {"block": "vanilla"}}
        )
    )
    args = build_parser().parse_args(
        [
            "pretrain",
            "--config",
            str(file),
            "--epochs",
            "3",
            "--encoder-rope",
            "grid",
            "--model-set",
            "decoder_depth=2",
            "--no-compile",
            "--out",
            "r",
        ]
    )
    cfg = build_config(args)
    assert (cfg.preset, cfg.loop.epochs, cfg.loop.batch_size, cfg.loop.compile, cfg.out_dir) == (
        "small",
        3,
        512,
        False,
        "r",
    )
    assert cfg.model == {"block": "vanilla", "encoder_rope": "grid", "decoder_depth": 2}
    assert cfg.loop.warmup_epochs == 10.0 and cfg.loop.peak_lr() == pytest.approx(3e-4)
    assert (
        main(
            [
                "pretrain",
                "--preset",
                "base",
                "--block",
                "vanilla",
                "--max-steps",
                "9",
                "--print-config",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert (
        printed["loop"]["max_steps"] == 9
        and printed["model"] == {"block": "vanilla"}
        and printed["loop"]["epochs"] == 100
    )
    assert main(["pretrain", "--preset", "nope", "--print-config"]) == 2


# ---- pieces --------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [None, 1e-12])
def test_clip_grad(shard_dir, tmp_path, clip):
    """Clipping to 1e-12 leaves AdamW's update ~lr * 1e-12 / eps: the weights barely move."""
    cfg = tiny_config(shard_dir, tmp_path / "run", max_steps=3, clip_grad=clip, weight_decay=0.0)
    result = pretrain(cfg)
    assert all(r["grad_norm"] > 1e-3 for r in result.history)  # the pre-clip norm is logged
    torch.manual_seed(cfg.loop.seed)
    init = AudioMAE(cfg.model_config()).state_dict()
    trained = AudioMAE.from_pretrained(result.model_dir).state_dict()
    moved = max(float((trained[k] - init[k]).abs().max()) for k in init)
    assert (moved < 1e-6) if clip else (moved > 1e-3), moved


def test_rng_states_round_trip():
    import random

    import numpy as np

    from audiomaepp.training.checkpoint import capture_rng, restore_rng

    tensors, meta = capture_rng()
    assert all(t.dtype == torch.uint8 for t in tensors.values())
    json.dumps(meta)
    want = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(tensors, json.loads(json.dumps(meta)))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_metrics_writer_jsonl_and_tensorboard(tmp_path, monkeypatch):
    """TensorBoard events go through SummaryWriter when it imports (faked here); NaN -> null."""
    import sys
    import types

    from audiomaepp.training.metrics import MetricsWriter, truncate_metrics

    scalars = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            scalars.append("closed")

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    writer = MetricsWriter(tmp_path)
    for step in (1, 2, 3):
        writer.write(
            {
                "step": step,
                "loss": math.nan if step == 2 else 1.0 / step,
                "lr": 1e-3,
                "mfu": None,
                "time": 0.1,
            }
        )
    writer.close()
    assert [r["loss"] for r in read_metrics(tmp_path)] == [1.0, None, pytest.approx(1 / 3)]
    assert (
        ("train/loss", 1.0, 1) in scalars
        and ("train/lr", 1e-3, 3) in scalars
        and scalars[-1] == "closed"
    )
    assert not any(tag == "train/mfu" for tag, *_ in scalars[:-1])
    truncate_metrics(tmp_path, 2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_max_steps_keeps_the_warmup_share_and_ends_at_zero():
    from audiomaepp.training import LoopConfig, lr_at, plan_run

    plan = plan_run(LoopConfig(max_steps=1000), torch.device("cpu"), 1, samples_per_epoch=2_000_000)
    assert plan.total_steps == 1000 and plan.warmup_steps == 100  # 10 of 100 epochs -> 10 %
    assert lr_at(999, plan.peak_lr, plan.warmup_steps, plan.total_steps) < 1e-3 * plan.peak_lr


def test_resume_refuses_another_schedule(shard_dir, tmp_path):
    cfg = tiny_config(shard_dir, tmp_path / "run", max_steps=6, save_every=3)
    pretrain(cfg)
    with pytest.raises(CheckpointError, match="total_steps was 6, this run has 3"):
        pretrain(cfg.replace(max_steps=3, resume="auto"))
    with pytest.raises(CheckpointError, match="seed"):
        pretrain(cfg.replace(seed=1, resume="auto"))
