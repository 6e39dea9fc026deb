"""A shortened demo end to end: corpus -> shards -> two pretrainings -> evaluation -> report."""

from __future__ import annotations

import json
import shutil

import pytest

from audiomaepp.demo import DemoConfig, compare, judge, run_demo

EMBEDDERS: list = []  # every Embedder the demo built (recorded by the fixture)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from audiomaepp.embedding import Embedder

    out = tmp_path_factory.mktemp("demo")

    def recorder(make):
        def wrapped(*args, **kwargs):
            emb = make(*args, **kwargs)
            EMBEDDERS.append(emb)
            return emb

        return wrapped

    with pytest.MonkeyPatch.context() as mp:
        for name in ("from_dir", "random_init"):
            mp.setattr(Embedder, name, recorder(getattr(Embedder, name)))
        return run_demo(_small_config(out))


def test_demo_embeds_in_float32(demo):
    """The answer must not depend on the CPU: dtype "auto" would pick bf16 where the CPU has
    native bf16 matmul, so the demo pins fp32 for the pretrained and the random-init encoders."""
    assert len(EMBEDDERS) == 3
    assert {e.dtype_name for e in EMBEDDERS} == {"float32"}
    assert {str(e.precision) for e in EMBEDDERS} <= {"float32", "torch.float32"}


def _small_config(out) -> DemoConfig:
    return DemoConfig(
        out=str(out),
        steps=12,
        probe_seeds=2,
        probe_max_epochs=30,
        device="cpu",
        corpus=dict(n_pool=16, n_per_task=40),
        progress=False,
    )


def test_demo_writes_the_report(demo):
    out = demo.out
    for name in (
        "DEMO.md",
        "demo.json",
        "report/results.md",
        "report/results.png",
        "report/results.json",
    ):
        assert (out / name).is_file(), name
    assert list((out / "report").glob("reconstruction_*.png")), "no reconstruction picture"
    for run in ("audiomaepp", "mae_vanilla"):
        assert (out / "runs" / run / "model" / "model.safetensors").is_file()
    assert (out / "shards" / "manifest.json").is_file()
    text = (out / "DEMO.md").read_text()
    assert demo.table in text
    assert "Did pretraining beat a random-init encoder" in text
    assert "Did AudioMAE++ beat the vanilla MAE" in text


def test_demo_table_has_the_four_models(demo):
    rows = [
        line for line in demo.table.splitlines() if line.startswith("| ") and "---" not in line
    ][1:]
    assert [r.split("|")[1].strip() for r in rows] == [
        "AudioMAE++",
        "MAE (vanilla)",
        "random init",
        "log-mel mean+std",
    ]
    assert set(demo.normalized) == {
        "AudioMAE++",
        "MAE (vanilla)",
        "random init",
        "log-mel mean+std",
    }
    meta = json.loads((demo.out / "demo.json").read_text())
    assert meta["steps"] == 12 and len(meta["verdicts"]) == 2


def test_verdicts_follow_the_numbers(demo):
    result = json.loads((demo.out / "report" / "results.json").read_text())
    scores = result["normalized_score"]
    for line, (a, b) in zip(
        demo.verdicts, [("AudioMAE++", "random init"), ("AudioMAE++", "MAE (vanilla)")], strict=True
    ):
        # the verdict's rule itself is checked on hand-written cases below
        assert f"normalized score {scores[a]:.1f} vs {scores[b]:.1f}" in line


def test_demo_shows_both_loss_curves(demo):
    from audiomaepp.demo import loss_curve

    assert (demo.out / "report" / "loss_curves.png").is_file()
    rows = [r for r in demo.losses.splitlines() if r.startswith("| ")]
    assert rows[0].startswith("| pretraining loss at step |") and rows[0].rstrip(" |").endswith(
        "12"
    )
    for name, run in (("AudioMAE++", "audiomaepp"), ("MAE (vanilla)", "mae_vanilla")):
        curve = loss_curve(demo.out / "runs" / run)
        assert curve and curve[-1][0] == 12
        row = next(r for r in rows if r.startswith(f"| {name} |"))
        assert (
            row.split("|")[-2].strip() == f"{curve[-1][1]:.3f}"
        )  # the last column is the final loss
    assert demo.losses in (demo.out / "DEMO.md").read_text()


class _R:
    """A stand-in evaluation result with chosen means and CIs."""

    def __init__(self, table, normalized):
        self.tasks = list(next(iter(table.values())))
        self.normalized = normalized
        self.results = {m: {t: _T(*v) for t, v in row.items()} for m, row in table.items()}


class _T:
    def __init__(self, mean, ci):
        self._s = (mean, ci)

    def summary(self):
        return self._s


def test_compare_and_judge_on_hand_made_numbers():
    table = {
        "AudioMAE++": {"a": (0.9, 0.01), "b": (0.5, 0.2), "c": (0.3, 0.01)},
        "random init": {"a": (0.5, 0.01), "b": (0.4, 0.2), "c": (0.6, 0.01)},
        "MAE (vanilla)": {"a": (0.8, 0.01), "b": (0.45, 0.01), "c": (0.2, 0.01)},
    }
    r = _R(table, {"AudioMAE++": 70.0, "random init": 40.0, "MAE (vanilla)": 60.0})
    c = compare(r, "AudioMAE++", "random init")
    assert (c["wins"], c["losses"]) == (1, 1)  # a: clear win, b: within noise, c: clear loss
    lines = judge(r)
    assert "**Mixed**" in lines[0]
    assert "**Yes**" in lines[1] and "clearly better (95 % CIs disjoint) on 2 of 3" in lines[1]


def test_answers_are_symmetric_and_never_overclaim():
    from audiomaepp.demo import answer

    assert answer(True, 2, 0) == "Yes" and answer(False, 0, 2) == "No"
    assert answer(True, 0, 0) == "Not clearly" and answer(False, 0, 0) == "Not clearly"
    assert answer(True, 0, 1) == "Mixed" and answer(False, 1, 0) == "Mixed"
    assert answer(True, 1, 1) == "Mixed" and answer(False, 1, 1) == "Mixed"


def test_demo_runs_with_its_own_thread_count_whatever_the_callers(monkeypatch, tmp_path):
    """Reductions split over threads round differently, so the default demo must run with its
    fixed thread count, not the machine's, and hand the caller's setting back afterwards."""
    import torch

    import audiomaepp.synth

    class Stop(Exception):
        pass

    seen = []

    def first_stage(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise Stop

    monkeypatch.setattr(audiomaepp.synth, "generate_corpus", first_stage)
    before = torch.get_num_threads()
    callers = 3 if DemoConfig().threads != 3 else 1
    torch.set_num_threads(callers)
    try:
        with pytest.raises(Stop):
            run_demo(DemoConfig(out=str(tmp_path)))
        assert seen == [DemoConfig().threads] and torch.get_num_threads() == callers
    finally:
        torch.set_num_threads(before)


def test_same_seed_prints_the_same_table(demo, tmp_path):
    again = run_demo(_small_config(tmp_path / "again"))
    assert (
        again.table == demo.table
        and again.verdicts == demo.verdicts
        and again.losses == demo.losses
    )


def test_rerun_with_other_steps_starts_afresh(demo, tmp_path):
    """A second demo into the same folder with another step count retrains instead of resuming.
    (In a folder of its own, beside a copy of the fixture's shards: the fixture's run stays.)"""
    from audiomaepp.demo import pretrain_model

    out = tmp_path / "copy"
    shutil.copytree(demo.out / "shards", out / "shards")
    cfg = DemoConfig(
        out=str(out),
        steps=6,
        device="cpu",
        corpus=dict(n_pool=16, n_per_task=40),
        progress=False,
    )
    pretrain_model(cfg, "AudioMAE++", "plusplus", out / "shards", 8, out)
    run = pretrain_model(cfg, "AudioMAE++", "plusplus", out / "shards", 6, out)
    state = json.loads((run["run_dir"] / "result.json").read_text())
    assert state["step"] == 6 and state["total_steps"] == 6
