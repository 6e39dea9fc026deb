"""Parity with the real hear-eval-kit 2021.1.3, guarded in CI by a committed fixture.

``tests/fixtures/heareval_golden.npz`` holds fixed log-mel embeddings of three demo tasks (one
multiclass top-1, one multilabel mAP, one 5-fold) and ``.json`` the kit's per-seed test scores
(mean over folds) on exactly these values, made by ``benchmarks/golden_heareval.py`` with the
kit's own runner. The fidelity criterion of docs/EVALUATION.md, on 10 seeds: every task's Welch
p >= 0.01 between our per-seed scores and the kit's, and the mean |difference| of the task means
<= 1.5 points.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audiomaepp.evaluation import FIDELITY_MEAN_DIFF_MAX as MEAN_DIFF_MAX
from audiomaepp.evaluation import FIDELITY_P_MIN as P_MIN
from audiomaepp.evaluation import ProbeData, probe_folds, welch_p

FIXTURE = Path(__file__).parent / "fixtures" / "heareval_golden"
TASKS = ("synth_family", "synth_mix", "synth_count")


def _fixture():
    if not FIXTURE.with_suffix(".json").is_file():
        pytest.fail(
            f"missing fixture {FIXTURE}.json (benchmarks/golden_heareval.py compare --fixture)"
        )
    meta = json.loads(FIXTURE.with_suffix(".json").read_text())
    arrays = np.load(FIXTURE.with_suffix(".npz"))
    return meta, arrays


def _data(arrays, task: str, splits: list[str]) -> ProbeData:
    return ProbeData(
        np.concatenate([arrays[f"{task}/{s}/x"].astype(np.float32) for s in splits]),
        np.concatenate([arrays[f"{task}/{s}/y"].astype(np.float32) for s in splits]),
    )


@pytest.fixture(scope="module")
def scores():
    """``{task: (kit per-seed scores, ours)}``; ours averaged over the task's test folds."""
    meta, arrays = _fixture()
    out = {}
    for task in TASKS:
        info = meta["tasks"][task]
        folds = [
            tuple(_data(arrays, task, s) for s in (f["train"], [f["valid"]], [f["test"]]))
            for f in info["folds"]
        ]
        runs = probe_folds(folds, info["prediction_type"], [info["metric"]], list(range(10)))
        ours = [float(np.mean([r.test[info["metric"]] for r in row])) for row in runs]
        out[task] = (info["kit_seed_scores"], ours)
    return out


def test_fixture_covers_a_kfold_task():
    meta, _ = _fixture()
    assert meta["tasks"]["synth_count"]["split_mode"].endswith("kfold")
    folds = meta["tasks"]["synth_count"]["folds"]
    assert len(folds) == 5 and len({f["test"] for f in folds}) == 5


@pytest.mark.parametrize("task", TASKS)
def test_probe_matches_the_kit_on_the_golden_fixture(scores, task):
    kit, ours = scores[task]
    assert len(kit) == len(ours) == 10
    p = welch_p(kit, ours)
    assert p >= P_MIN, (
        f"{task}: ours {np.mean(ours):.4f} vs the kit's {np.mean(kit):.4f}, p={p:.4f}"
    )


def test_mean_difference_over_the_fixture_cells(scores):
    diffs = [abs(np.mean(k) - np.mean(o)) for k, o in scores.values()]
    assert np.mean(diffs) <= MEAN_DIFF_MAX, diffs
