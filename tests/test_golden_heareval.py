"""Parity with the real hear-eval-kit 2021.1.3, guarded in CI by a committed fixture.

``tests/fixtures/heareval_golden.npz`` holds fixed log-mel embeddings of two demo tasks (one
multiclass top-1, one multilabel mAP) and ``.json`` the kit's per-seed test scores on exactly these
values, made by ``benchmarks/golden_heareval.py`` with the kit's own runner. Our probe must land
where the kit does: each task's mean within both 95 % CIs (ours and the kit's), over 10 seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audiomaepp.evaluation import ProbeData, mean_ci, probe_folds

FIXTURE = Path(__file__).parent / "fixtures" / "heareval_golden"


def _fixture():
    if not FIXTURE.with_suffix(".json").is_file():
        pytest.fail(
            f"missing fixture {FIXTURE}.json (benchmarks/golden_heareval.py compare --fixture)"
        )
    meta = json.loads(FIXTURE.with_suffix(".json").read_text())
    arrays = np.load(FIXTURE.with_suffix(".npz"))
    return meta, arrays


def _split(arrays, task: str, split: str) -> ProbeData:
    return ProbeData(
        arrays[f"{task}/{split}/x"].astype(np.float32),
        arrays[f"{task}/{split}/y"].astype(np.float32),
    )


@pytest.mark.parametrize("task", ["synth_family", "synth_mix"])
def test_probe_matches_the_kit_on_the_golden_fixture(task):
    meta, arrays = _fixture()
    info = meta["tasks"][task]
    assert info["split_mode"] == "trainvaltest"
    data = [tuple(_split(arrays, task, s) for s in ("train", "valid", "test"))]
    seeds = list(range(meta["seeds"]))
    runs = probe_folds(data, info["prediction_type"], [info["metric"]], seeds)
    ours = [r[0].test[info["metric"]] for r in runs]
    (mk, ck), (mo, co) = mean_ci(info["kit_seed_scores"]), mean_ci(ours)
    assert len(info["kit_seed_scores"]) == len(ours) == 10
    assert abs(mk - mo) <= ck, f"our mean {mo:.4f} outside the kit's {mk:.4f} ± {ck:.4f}"
    assert abs(mk - mo) <= co, f"the kit's mean {mk:.4f} outside ours {mo:.4f} ± {co:.4f}"
