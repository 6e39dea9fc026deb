"""A shortened demo end to end: corpus -> shards -> two pretrainings -> evaluation -> report."""

from __future__ import annotations

import json

import pytest

from audiomaepp.demo import DemoConfig, compare, judge, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(out=str(out), steps=12, probe_seeds=2, probe_max_epochs=30, device="cpu",
                     corpus=dict(n_pool=16, n_per_task=40), progress=False)
    return run_demo(cfg)


def test_demo_writes_the_report(demo):
    out = demo.out
    for name in ("DEMO.md", "demo.json", "report/results.md", "report/results.png", "report/results.json"):
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
    rows = [line for line in demo.table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["AudioMAE++", "MAE (vanilla)", "random init",
                                                       "log-mel mean+std"]
    assert set(demo.normalized) == {"AudioMAE++", "MAE (vanilla)", "random init", "log-mel mean+std"}
    meta = json.loads((demo.out / "demo.json").read_text())
    assert meta["steps"] == 12 and len(meta["verdicts"]) == 2


def test_verdicts_follow_the_numbers(demo):
    result = json.loads((demo.out / "report" / "results.json").read_text())
    scores = result["normalized_score"]
    for line, (a, b) in zip(demo.verdicts, [("AudioMAE++", "random init"), ("AudioMAE++", "MAE (vanilla)")],
                            strict=True):
        assert f"normalized score {scores[a]:.1f} vs {scores[b]:.1f}" in line
        if scores[a] < scores[b]:
            assert "**Yes**" not in line  # never claims a win it did not measure


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
    from audiomaepp.demo import _answer

    assert _answer(True, 2, 0) == "Yes" and _answer(False, 0, 2) == "No"
    assert _answer(True, 0, 0) == "Not clearly" and _answer(False, 0, 0) == "No"
    assert _answer(True, 0, 1) == "Mixed" and _answer(False, 1, 0) == "Mixed"


def test_rerun_with_other_steps_starts_afresh(demo, tmp_path):
    """A second demo into the same folder with another step count retrains instead of resuming.
    (Runs last: it replaces the fixture's AudioMAE++ run.)"""
    from audiomaepp.demo import _pretrain

    cfg = DemoConfig(out=str(demo.out), steps=6, device="cpu", corpus=dict(n_pool=16, n_per_task=40),
                     progress=False)
    run = _pretrain(cfg, "AudioMAE++", "plusplus", demo.out / "shards", 6, demo.out)
    state = json.loads((run["run_dir"] / "result.json").read_text())
    assert state["step"] == 6 and state["total_steps"] == 6
