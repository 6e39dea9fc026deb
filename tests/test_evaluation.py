"""Tests of audiomaepp.evaluation: task reader, metrics, statistics, probe, cache, report, CLI.

Tiny HEAR-format tasks are generated here: 0.25-s clips holding tones whose frequency (400, 1200
or 3500 Hz) is the label, so the log-mel baseline makes them learnable.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiomaepp.errors import InvalidAudioError
from audiomaepp.evaluation import (
    EmbedderError,
    Fold,
    LogMelStatsEmbedder,
    ProbeConfig,
    ProbeData,
    TaskFormatError,
    embed_split,
    find_task_dirs,
    make_embedder,
    markdown_table,
    mean_ci,
    normalized_scores,
    read_task,
    run_evaluation,
    t_quantile,
    welch_p,
)
from audiomaepp.evaluation.metrics import (
    aucroc,
    average_precision,
    chroma_acc,
    d_prime,
    mean_average_precision,
    top1_acc,
)
from audiomaepp.evaluation.probe import (
    Member,
    fit_members,
    grid_order,
    init_weights,
    predict,
    probe_folds,
    select_dropout,
    standardize,
)
from audiomaepp.evaluation.stats import betainc, student_t_cdf
from audiomaepp.frontend import log_mel

SR = 16_000
FREQS = (400.0, 1200.0, 3500.0)
LABELS = ("low", "mid", "high")
FAST = {"max_epochs": 9}  # probe settings for tests that only check plumbing


# --------------------------------------------------------------------------- synthetic tasks


def _clip(rng: np.random.Generator, classes: list[int], n: int = 4000) -> np.ndarray:
    t = np.arange(n) / SR
    x = 0.02 * rng.standard_normal(n)
    for c in classes:
        f = FREQS[c] * (1 + rng.uniform(-0.03, 0.03))
        x += rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return x.astype(np.float32)


def _labels_for(rng: np.random.Generator, i: int, ptype: str, ncls: int) -> list[int]:
    if ptype == "multiclass":
        return [i % ncls]
    mask = rng.random(ncls) < 0.5
    if not mask.any():
        mask[rng.integers(ncls)] = True
    return [int(c) for c in np.flatnonzero(mask)]


def make_task(
    root: Path,
    name: str,
    ptype: str,
    mode: str,
    splits: dict[str, int],
    ncls: int = 3,
    seed: int = 0,
    metrics: tuple[str, ...] = ("top1_acc",),
) -> Path:
    """Write a HEAR-format scene task with ``splits[name]`` clips per split."""
    rng = np.random.default_rng(seed)
    d = root / name
    d.mkdir(parents=True)
    meta = {
        "task_name": name,
        "embedding_type": "scene",
        "prediction_type": ptype,
        "split_mode": mode,
        "nfolds": None if mode == "trainvaltest" else len(splits),
        "evaluation": list(metrics),
        "sample_duration": 0.25,
    }
    (d / "task_metadata.json").write_text(json.dumps(meta))
    (d / "labelvocabulary.csv").write_text(
        "idx,label\n" + "".join(f"{i},{LABELS[i]}\n" for i in range(ncls))
    )
    for split, n in splits.items():
        (d / "16000" / split).mkdir(parents=True)
        entries = {}
        for i in range(n):
            cls = _labels_for(rng, i, ptype, ncls)
            fname = f"{split}_{i:03d}.wav"
            sf.write(d / "16000" / split / fname, _clip(rng, cls), SR)
            entries[fname] = [LABELS[c] for c in cls]
        (d / f"{split}.json").write_text(json.dumps(entries))
    return d


@pytest.fixture(scope="module")
def tasks_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    make_task(root, "tones", "multiclass", "trainvaltest", {"train": 45, "valid": 15, "test": 30})
    make_task(
        root,
        "mix",
        "multilabel",
        "trainvaltest",
        {"train": 60, "valid": 20, "test": 30},
        seed=1,
        metrics=("mAP", "d_prime", "aucroc", "top1_acc"),
    )
    make_task(
        root,
        "kfold",
        "multiclass",
        "new_split_kfold",
        {"fold00": 15, "fold01": 15, "fold02": 15},
        ncls=2,
        seed=2,
    )
    return root


@pytest.fixture()
def tones_copy(tasks_root, tmp_path) -> Path:
    """A private copy of the multiclass task to break in tests."""
    return Path(shutil.copytree(tasks_root / "tones", tmp_path / "tones"))


def _split_data(task, split: str) -> ProbeData:
    return ProbeData(embed_split(LogMelStatsEmbedder(), task, split), task.targets(split))


class CountingEmbedder:
    """Log-mel baseline that counts ``embed`` calls (for the cache test)."""

    embedding_size = 160

    def __init__(self, name: str = "counting", cache_key: str = "counting-v1") -> None:
        self.name, self.cache_key, self.calls = name, cache_key, 0
        self._inner = LogMelStatsEmbedder()

    def embed(self, audio):
        self.calls += 1
        return self._inner.embed(audio)


class MeanOnlyEmbedder:
    """A weaker second model for the report: only the per-bin log-mel means (dim 80)."""

    name = "mean-only"
    cache_key = "mean-only-v1"

    def embed(self, audio):
        return LogMelStatsEmbedder().embed(audio)[:, :80]


# --------------------------------------------------------------------------- task reader


def test_read_trainvaltest_task(tasks_root):
    task = read_task(tasks_root / "tones")
    assert (task.name, task.prediction_type, task.split_mode) == (
        "tones",
        "multiclass",
        "trainvaltest",
    )
    assert task.labels == LABELS and task.primary_metric == "top1_acc"
    assert task.split_names == ["train", "valid", "test"]
    assert task.folds() == [Fold(("train",), "valid", "test")]
    files = task.files("train")
    assert files == sorted(files) and len(files) == 45
    y = task.targets("train")
    assert y.shape == (45, 3) and y.dtype == np.float32 and (y.sum(1) == 1).all()
    assert y[files.index("train_004.wav")].argmax() == 1  # i % 3 == 1 -> "mid"
    assert task.audio_path("test", "test_000.wav").is_file()


def test_read_multilabel_task(tasks_root):
    task = read_task(tasks_root / "mix")
    assert task.prediction_type == "multilabel" and task.metrics[0] == "mAP"
    y = task.targets("test")
    assert y.shape == (30, 3) and (y.sum(1) >= 1).all() and (y.sum(1) > 1).any()


def test_kfold_scheme_validates_on_next_fold(tasks_root):
    task = read_task(tasks_root / "kfold")
    assert task.split_names == ["fold00", "fold01", "fold02"]
    assert task.folds() == [
        Fold(("fold02",), "fold01", "fold00"),
        Fold(("fold00",), "fold02", "fold01"),
        Fold(("fold01",), "fold00", "fold02"),
    ]


def test_find_task_dirs(tasks_root):
    assert [p.name for p in find_task_dirs([tasks_root])] == ["kfold", "mix", "tones"]
    assert find_task_dirs([tasks_root / "mix", tasks_root / "mix"]) == [tasks_root / "mix"]
    with pytest.raises(TaskFormatError, match="no such task folder"):
        find_task_dirs([tasks_root / "nope"])
    with pytest.raises(TaskFormatError, match="task_metadata.json"):
        find_task_dirs([tasks_root / "tones" / "16000"])


def _edit_json(path: Path, fn) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def _set(key, value):
    def edit(meta):
        meta[key] = value
        return meta

    return edit


def _drop(key):
    def edit(meta):
        meta.pop(key)
        return meta

    return edit


@pytest.mark.parametrize(
    ("edit", "file", "message"),
    [
        (_drop("prediction_type"), "task_metadata.json", "missing key"),
        (_set("split_mode", "random"), "task_metadata.json", "split_mode"),
        (_set("embedding_type", "event"), "task_metadata.json", "only scene tasks"),
        (_set("evaluation", ["f1_magic"]), "task_metadata.json", "unknown metric"),
        (_set("evaluation", []), "task_metadata.json", "evaluation"),
        (_set("prediction_type", "regression"), "task_metadata.json", "prediction_type"),
    ],
)
def test_bad_metadata_names_the_file(tones_copy, edit, file, message):
    _edit_json(tones_copy / file, edit)
    with pytest.raises(TaskFormatError, match=message) as err:
        read_task(tones_copy)
    assert file in str(err.value)


def test_bad_kfold_count(tones_copy):
    _edit_json(tones_copy / "task_metadata.json", _set("split_mode", "presplit_kfold"))
    _edit_json(tones_copy / "task_metadata.json", _set("nfolds", 2))
    with pytest.raises(TaskFormatError, match="nfolds >= 3"):
        read_task(tones_copy)


def test_malformed_files_are_named(tones_copy):
    (tones_copy / "task_metadata.json").write_text("{not json")
    with pytest.raises(TaskFormatError, match="task_metadata.json.*not valid JSON"):
        read_task(tones_copy)


def test_bad_labels_are_named(tones_copy):
    _edit_json(tones_copy / "train.json", lambda d: {**d, "train_000.wav": ["purple"]})
    with pytest.raises(TaskFormatError, match=r"train\.json.*train_000\.wav.*purple"):
        read_task(tones_copy)
    _edit_json(tones_copy / "train.json", lambda d: {**d, "train_000.wav": ["low", "mid"]})
    with pytest.raises(TaskFormatError, match="exactly one"):
        read_task(tones_copy)


def test_bad_vocabulary_and_missing_split(tones_copy):
    (tones_copy / "labelvocabulary.csv").write_text("id,name\n0,low\n")
    with pytest.raises(TaskFormatError, match="labelvocabulary.csv"):
        read_task(tones_copy)
    (tones_copy / "labelvocabulary.csv").write_text("idx,label\n0,low\n2,mid\n")
    with pytest.raises(TaskFormatError, match="without gaps"):
        read_task(tones_copy)
    (tones_copy / "labelvocabulary.csv").write_text("idx,label\n0,low\n1,mid\n2,high\n")
    (tones_copy / "valid.json").unlink()
    with pytest.raises(TaskFormatError, match=r"valid\.json: missing file"):
        read_task(tones_copy)


def test_missing_audio_is_reported_before_embedding(tones_copy):
    (tones_copy / "16000" / "test" / "test_007.wav").unlink()
    with pytest.raises(TaskFormatError, match="test_007.wav"):
        read_task(tones_copy)
    assert read_task(tones_copy, check_audio=False).name == "tones"


# --------------------------------------------------------------------------- metrics


def test_top1_and_chroma_accuracy():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]])
    targets = np.eye(3)[[1, 0, 1, 2]]
    assert top1_acc(scores, targets) == pytest.approx(0.5)
    multi = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=np.float32)
    # the kit compares argmax(pred) with argmax(target): a multilabel row counts its first label
    assert top1_acc(scores, multi) == pytest.approx(0.5)
    tied = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2]])
    assert top1_acc(tied, np.eye(3)[[0, 1]]) == pytest.approx(0.5)  # a tie goes to the first class
    scores13 = np.zeros((2, 13))
    scores13[0, 12], scores13[1, 5] = 1, 1
    assert chroma_acc(scores13, np.eye(13)[[0, 6]]) == pytest.approx(0.5)  # 12 == 0 mod 12


def test_average_precision_by_hand():
    # ranking 0.9(+) 0.8(-) 0.7(+) 0.1(-): precision 1/1 at the first hit, 2/3 at the second
    assert average_precision(
        np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])
    ) == pytest.approx(5 / 6)
    # one tied block of {+, -}: a single threshold with precision 1/2
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)
    # ties inside a ranking: 0.9(+) then a block {0.5(-), 0.5(+)}: steps at 1/1 and 2/3
    assert average_precision(np.array([0.9, 0.5, 0.5]), np.array([1, 0, 1])) == pytest.approx(
        0.5 + 0.5 * 2 / 3
    )
    assert average_precision(np.array([0.3, 0.2]), np.array([0, 0])) == 0.0  # scikit-learn >= 1.1


def test_mean_average_precision_counts_absent_classes_as_zero():
    scores = np.array([[0.9, 0.2, 0.1], [0.8, 0.6, 0.3], [0.7, 0.1, 0.9], [0.1, 0.3, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    # class 0: 5/6; class 1: its positive ranks first -> 1; class 2: no positive -> 0 (sklearn)
    assert mean_average_precision(scores, targets) == pytest.approx((5 / 6 + 1 + 0) / 3)


def test_aucroc_and_d_prime_by_hand():
    scores = np.array([[0.9], [0.8], [0.7], [0.1]])
    targets = np.array([[1], [0], [1], [0]])
    assert aucroc(scores, targets) == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered
    assert d_prime(scores, targets) == pytest.approx(math.sqrt(2) * 0.6744897501960817)
    tied = aucroc(np.array([[0.5], [0.5], [0.2]]), np.array([[1], [0], [0]]))
    assert tied == pytest.approx(0.75)  # a tie counts one half
    two = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.5]])
    assert math.isnan(aucroc(two, np.array([[1, 0], [0, 0], [1, 0]])))  # class 1 has no positive
    assert math.isnan(d_prime(two, np.array([[1, 0], [0, 0], [1, 0]])))
    assert (
        d_prime(two[:, :1], np.array([[1], [0], [1]])) == math.inf
    )  # perfect ranking: no clipping


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 4, 2.7764),
        (0.975, 9, 2.2622),
        (0.975, 29, 2.0452),
        (0.995, 3, 5.8409),
        (0.9, 5, 1.4759),
        (0.975, 120, 1.9799),
    ],
)
def test_t_quantile_known_values(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-4)
    assert student_t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)


def test_betainc_closed_forms():
    # I_x(1, b) = 1 - (1 - x)^b ; I_x(1/2, 1/2) = 2/pi * asin(sqrt(x))
    assert betainc(1.0, 3.0, 0.2) == pytest.approx(1 - 0.8**3, rel=1e-12)
    assert betainc(0.5, 0.5, 0.3) == pytest.approx(
        2 / math.pi * math.asin(math.sqrt(0.3)), rel=1e-12
    )
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, rel=1e-12)


def test_mean_ci_formula():
    mean, ci = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == pytest.approx(3.0)
    assert ci == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    one_mean, one_ci = mean_ci([0.7])
    assert one_mean == 0.7 and math.isnan(one_ci)


def test_welch_p_against_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = [0.42, 0.44, 0.41, 0.43, 0.45], [0.46, 0.47, 0.45, 0.49, 0.44, 0.48]
    expected = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    assert welch_p(a, b) == pytest.approx(expected, rel=1e-9)
    assert welch_p(a, a) == pytest.approx(1.0)
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0 and welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0


def test_normalized_scores_by_hand():
    table = {"A": {"t1": 0.5, "t2": 0.8}, "B": {"t1": 0.7, "t2": 0.6}, "C": {"t1": 0.9, "t2": 0.7}}
    s = normalized_scores(table)
    assert s == pytest.approx({"A": 50.0, "B": 25.0, "C": 75.0})
    for m, extra in zip("ABC", (0.3, 0.3, 0.3), strict=True):
        table[m]["t3"] = extra  # a task everyone ties on counts 1 for all: +100/3 each
    s3 = normalized_scores(table)
    assert s3 == pytest.approx({"A": 200 / 3, "B": 150 / 3, "C": 250 / 3})
    assert normalized_scores({"solo": {"t": 0.4}}) == {"solo": 100.0}


# --------------------------------------------------------------------------- probe


def _kit_probe(d: int, c: int, hidden: int, dropout: float) -> torch.nn.Sequential:
    """hear-eval-kit's FullyConnectedPrediction (1 hidden layer, xavier-normal) from nn modules,
    in the kit's order of construction and initialisation."""
    first = torch.nn.Linear(d, hidden)
    torch.nn.init.xavier_normal_(first.weight, gain=torch.nn.init.calculate_gain("linear"))
    mods = [first, torch.nn.BatchNorm1d(hidden), torch.nn.Dropout(dropout), torch.nn.ReLU()]
    last = torch.nn.Linear(hidden, c)
    torch.nn.init.xavier_normal_(last.weight, gain=torch.nn.init.calculate_gain("relu"))
    return torch.nn.Sequential(*mods, last)


def test_probe_init_is_the_kits_draw_for_the_same_seed():
    torch.manual_seed(7)
    kit = _kit_probe(40, 5, 64, 0.1)
    ours = init_weights(40, 5, 64, torch.Generator().manual_seed(7))
    assert torch.equal(ours.w1, kit[0].weight.detach().t()) and torch.equal(
        ours.b1, kit[0].bias.detach()
    )
    assert torch.equal(ours.w2, kit[4].weight.detach().t()) and torch.equal(
        ours.b2, kit[4].bias.detach()
    )
    assert float(ours.b1.abs().max()) > 0  # PyTorch's default bias init, as the kit keeps it
    assert torch.equal(ours.gamma, torch.ones(64)) and torch.equal(ours.running_var, torch.ones(64))


@pytest.mark.parametrize("prediction_type", ["multiclass", "multilabel"])
def test_probe_step_matches_the_kits_modules(prediction_type):
    """One training step of the stacked probe (forward and backward written by hand) and an eval
    pass equal the kit's nn.Sequential with autograd and torch.optim.Adam, same weights and mask:
    Linear -> BatchNorm1d -> Dropout -> ReLU -> Linear."""
    from audiomaepp.evaluation import probe as P

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(50, 12)).astype(np.float32)) + 3  # off-centre inputs
    y = torch.zeros(50, 4)
    if prediction_type == "multiclass":
        y[torch.arange(50), torch.from_numpy(rng.integers(4, size=50))] = 1
    else:
        y[torch.from_numpy(rng.random((50, 4)) < 0.3)] = 1
    torch.manual_seed(3)
    kit = _kit_probe(12, 4, 32, 0.25)
    torch.manual_seed(99)  # nn.Dropout draws its mask from the global generator...
    kit.train()
    logits_kit = kit(x)
    keep = torch.empty(50, 32).bernoulli_(0.75, generator=torch.Generator().manual_seed(99))
    w = P.init_weights(12, 4, 32, torch.Generator().manual_seed(3))
    st = P._Stack([w], [0.25], torch.device("cpu"))
    bits = torch.where(keep.t() > 0, -32768, 32767).to(torch.int16)[None]  # kept <=> below
    args = (x, x.t().contiguous(), y.t().contiguous(), bits, prediction_type, 1e-2)
    logits = P._train_step(st, *args)[0].t()
    torch.testing.assert_close(logits, logits_kit, rtol=1e-5, atol=1e-5)  # ...the same draw
    loss_kit = (
        torch.nn.CrossEntropyLoss()(logits_kit, y.argmax(1))
        if prediction_type == "multiclass"
        else torch.nn.BCEWithLogitsLoss()(logits_kit, y)
    )
    opt_kit = torch.optim.Adam(kit.parameters(), lr=1e-2)
    loss_kit.backward()
    opt_kit.step()
    tol = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(st.w1[0], kit[0].weight.detach(), **tol)
    torch.testing.assert_close(st.gamma[0], kit[1].weight.detach(), **tol)
    torch.testing.assert_close(st.beta[0], kit[1].bias.detach(), **tol)
    torch.testing.assert_close(st.w2[0], kit[4].weight.detach(), **tol)
    torch.testing.assert_close(st.b2[0], kit[4].bias.detach(), **tol)
    torch.testing.assert_close(st.running_mean[0], kit[1].running_mean)
    torch.testing.assert_close(st.running_var[0], kit[1].running_var)  # unbiased, momentum 0.1
    # The first bias feeds BatchNorm, which removes it: the kit's gradient is rounding noise that
    # Adam turns into a step of up to lr; ours is exactly zero. Compare eval with it aligned.
    assert float((st.b1[0] - kit[0].bias).detach().abs().max()) <= 1e-2 * (1 + 1e-5)
    with torch.no_grad():
        st.b1.copy_(kit[0].bias[None])
    kit.eval()
    with torch.no_grad():
        ours = P._eval_logits(P._stack_view(st), x)[0].t()
        torch.testing.assert_close(ours, kit(x), rtol=1e-5, atol=1e-5)
        act = (lambda z: z.softmax(1)) if prediction_type == "multiclass" else torch.sigmoid
        np.testing.assert_allclose(
            predict(st.weights(0), x.numpy(), prediction_type), act(kit(x)).numpy(), atol=1e-5
        )


def test_standardize_uses_train_statistics():
    train = np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)
    tr, other = standardize(train, np.array([[2.0, 7.0]], dtype=np.float32))
    np.testing.assert_allclose(tr, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(other, [[0.0, 2.0]])  # constant dim: centred, std 1
    assert ProbeConfig().standardize is False  # the kit feeds raw embeddings


def _random_probe_data(rng, n: int, d: int, c: int, multilabel: bool) -> ProbeData:
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.zeros((n, c), np.float32)
    if multilabel:
        y[rng.random((n, c)) < 0.3] = 1
    else:
        y[np.arange(n), rng.integers(c, size=n)] = 1
    x[:, 0] += 2 * y.argmax(1)  # something to learn
    return ProbeData(x, y)


@pytest.mark.parametrize(
    ("prediction_type", "metric"), [("multiclass", "top1_acc"), ("multilabel", "mAP")]
)
def test_a_member_in_a_stack_is_its_solo_run(prediction_type, metric):
    """The stated tolerance: a member trained with seven others stops at the same epoch with the
    same validation score as alone, and its logits agree within 1e-4 (only the shared matrix
    products' shapes differ, hence the last bits)."""
    rng = np.random.default_rng(0)
    tr, va = (_random_probe_data(rng, n, 9, 5, prediction_type == "multilabel") for n in (83, 40))
    cfg = ProbeConfig(
        hidden_dim=48, batch_size=32, max_epochs=60, patience=3
    )  # 3 batches, last one short
    members = [Member(s, p) for s in (0, 1, 2, 5) for p in (0.1, 0.25)]
    together = fit_members(tr, va, prediction_type, metric, members, cfg)
    assert len({r.epochs for r in together}) > 1  # members stopped at different epochs
    for m, r in zip(members, together, strict=True):
        alone = fit_members(tr, va, prediction_type, metric, [m], cfg)[0]
        assert (r.member, r.valid_score, r.best_epoch, r.epochs) == (
            alone.member,
            alone.valid_score,
            alone.best_epoch,
            alone.epochs,
        )
        np.testing.assert_allclose(
            predict(r.weights, va.x, prediction_type),
            predict(alone.weights, va.x, prediction_type),
            atol=1e-4,
        )


def test_members_draw_independent_streams():
    """Each member's masks come from its own stream: the same member in a different company gives
    the same fit, and two folds (or two dropouts) of one seed are different draws."""
    from audiomaepp.evaluation import probe as P

    a, b, c = Member(3, 0.1), Member(3, 0.25), Member(3, 0.1, fold=1)
    assert len({P._mask_seed(m) for m in (a, b, c)}) == 3
    assert P._init_seed(a) == P._init_seed(b) == 3  # the first fold: the kit's draw for the seed
    assert P._init_seed(c) != 3


def test_fold_streams_restart_repeats_the_first_folds_draws():
    """``fold_streams="restart"`` (the k-fold study's baseline) gives a later fold the first
    fold's draws, so on two identical folds the second repeats the first; "independent" (the
    default) draws anew; anything else is refused."""
    rng = np.random.default_rng(1)
    fold = tuple(_random_probe_data(rng, n, 9, 5, True) for n in (83, 40, 40))
    base = ProbeConfig(hidden_dim=48, batch_size=32, max_epochs=30, patience=3)

    def run(mode: str):
        cfg = ProbeConfig(**{**base.__dict__, "fold_streams": mode})
        (row,) = probe_folds([fold, fold], "multilabel", ["mAP"], [0], cfg)
        return [(r.dropout, r.valid_score, r.best_epoch, r.test["mAP"]) for r in row]

    first, second = run("restart")
    assert second[:3] == first[:3] and second[3] == pytest.approx(first[3], abs=1e-6)
    independent = run("independent")
    assert independent[0] == first
    assert independent[1] != pytest.approx(first, abs=1e-6)
    with pytest.raises(ValueError, match="fold_streams"):
        run("sometimes")


def test_dropout_draws_keep_the_stated_fraction():
    """16-bit draws against each member's threshold keep ~90 % / 75 % / all units."""
    from audiomaepp.evaluation import probe as P

    st = P._Stack(
        [init_weights(4, 2, 512, torch.Generator().manual_seed(0))] * 3,
        [0.1, 0.25, 0.0],
        torch.device("cpu"),
    )
    bits = P._draw_bits([np.random.PCG64(s) for s in range(3)], 512, 200)
    keep = (bits < st.thresholds[:, None, None]) | st.no_drop[:, None, None]
    frac = keep.float().mean(dim=(1, 2))
    assert abs(float(frac[0]) - 0.9) < 0.005 and abs(float(frac[1]) - 0.75) < 0.005
    assert float(frac[2]) == 1.0
    tr = _random_probe_data(np.random.default_rng(0), 40, 4, 2, False)
    cfg = ProbeConfig(hidden_dim=16, batch_size=16, max_epochs=6)
    (r,) = fit_members(tr, tr, "multiclass", "top1_acc", [Member(0, 0.0)], cfg)
    assert r.epochs == 6 and math.isfinite(r.valid_score)


def test_probe_learns_and_is_deterministic(tasks_root):
    task = read_task(tasks_root / "tones")
    data = [tuple(_split_data(task, s) for s in ("train", "valid", "test"))]
    cfg = ProbeConfig(max_epochs=60)
    a = probe_folds(data, "multiclass", ["top1_acc"], [3, 4], cfg)
    b = probe_folds(data, "multiclass", ["top1_acc"], [3, 4], cfg)
    assert a[0][0].test["top1_acc"] >= 0.8  # chance is 1/3
    assert a == b  # same seeds, same embeddings -> identical selection, epochs and scores
    for (r,), seed in zip(a, (3, 4), strict=True):
        assert set(r.grid) == {0.1, 0.25}
        assert r.dropout == select_dropout(r.grid, (0.1, 0.25), seed)


def test_dropout_selection_breaks_ties_in_the_kits_shuffled_order():
    for seed in range(6):
        order = grid_order((0.1, 0.25), seed)
        assert sorted(order) == [0.1, 0.25]
        assert select_dropout({0.1: 0.5, 0.25: 0.5}, (0.1, 0.25), seed) == order[0]
        assert select_dropout({0.1: 0.4, 0.25: 0.5}, (0.1, 0.25), seed) == 0.25
    assert {grid_order((0.1, 0.25), s)[0] for s in range(6)} == {0.1, 0.25}  # the order does vary


def test_probe_minibatches_and_early_stopping(tasks_root):
    task = read_task(tasks_root / "mix")
    data = [tuple(_split_data(task, s) for s in ("train", "valid", "test"))]
    cfg = ProbeConfig(batch_size=16, patience=2, max_epochs=500)
    a = probe_folds(data, "multilabel", list(task.metrics), [0], cfg)[0][0]
    assert a.epochs < 500 and a.best_epoch % 3 == 0 and a.best_epoch <= a.epochs
    assert a.epochs - a.best_epoch == 3 * cfg.patience  # stopped after `patience` idle checks
    assert set(a.test) == {"mAP", "d_prime", "aucroc", "top1_acc"}
    assert a.test["mAP"] > 0.8


def test_grid_is_searched_on_the_first_fold_only(tasks_root):
    task = read_task(tasks_root / "kfold")
    result = run_evaluation(
        [LogMelStatsEmbedder()], [tasks_root / "kfold"], seeds=[0, 1, 2], progress=False, **FAST
    )
    for folds in result.results["logmel"]["kfold"].runs:
        assert len(folds) == len(task.folds())
        assert all(
            f.dropout == folds[0].dropout for f in folds
        )  # the first fold's choice, everywhere


# --------------------------------------------------------------------------- embedders


def test_logmel_stats_embedder_matches_log_mel():
    rng = np.random.default_rng(0)
    clips = [_clip(rng, [0]), _clip(rng, [2], n=3000), _clip(rng, [1])]
    emb = LogMelStatsEmbedder(batch_size=1).embed(clips)
    assert emb.shape == (3, 160) and emb.dtype == np.float32
    lm = log_mel(torch.from_numpy(clips[1]))[0, 0]  # (T, 80)
    np.testing.assert_allclose(emb[1, :80], lm.mean(0).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(emb[1, 80:], lm.std(0, unbiased=False).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        LogMelStatsEmbedder(batch_size=8).embed(clips), emb, rtol=1e-5, atol=1e-5
    )


def test_make_embedder_specs(tmp_path, monkeypatch):
    assert isinstance(make_embedder("logmel"), LogMelStatsEmbedder)
    with pytest.raises(EmbedderError, match="not a model directory"):
        make_embedder(str(tmp_path / "missing"))
    calls = []

    class FakeSceneEmbedder:
        @classmethod
        def random_init(cls, preset, **kw):
            calls.append(("random", preset, kw))
            return "random-model"

        @classmethod
        def from_dir(cls, path, **kw):
            calls.append(("dir", Path(path), kw))
            return "dir-model"

    fake = types.ModuleType("audiomaepp.embedding")
    fake.Embedder = FakeSceneEmbedder
    monkeypatch.setitem(sys.modules, "audiomaepp.embedding", fake)
    assert make_embedder("random:tiny", device="cpu", seed=4) == "random-model"
    assert make_embedder(str(tmp_path), device="cpu", batch_size=8, layout="release") == "dir-model"
    assert calls == [
        ("random", "tiny", {"seed": 4, "device": "cpu"}),
        ("dir", tmp_path, {"device": "cpu", "batch_size": 8, "layout": "release"}),
    ]
    with pytest.raises(EmbedderError, match="random:<preset>"):
        make_embedder("random:")


# --------------------------------------------------------------------------- runner, cache, report


def test_kfold_task_score_is_the_fold_average(tasks_root):
    result = run_evaluation(
        [LogMelStatsEmbedder()], [tasks_root / "kfold"], seeds=[0, 1], progress=False, **FAST
    )
    r = result.results["logmel"]["kfold"]
    assert r.seeds == [0, 1] and len(r.runs) == 2
    assert [(f.fold, f.valid) for f in r.runs[0]] == [
        ("fold00", "fold01"),
        ("fold01", "fold02"),
        ("fold02", "fold00"),
    ]
    per_seed = [np.mean([f.test["top1_acc"] for f in folds]) for folds in r.runs]
    assert r.seed_scores() == pytest.approx(per_seed)
    assert r.mean == pytest.approx(np.mean(per_seed))
    assert r.ci == pytest.approx(12.7062047 * np.std(per_seed, ddof=1) / math.sqrt(2))


def test_embedding_cache_is_reused(tasks_root, tmp_path):
    emb = CountingEmbedder()
    cache = tmp_path / "cache"
    first = run_evaluation(
        [emb], [tasks_root / "tones"], seeds=1, cache_dir=cache, progress=False, **FAST
    )
    calls = emb.calls
    assert calls == 3  # one chunk per split
    second = run_evaluation(
        [emb], [tasks_root / "tones"], seeds=1, cache_dir=cache, progress=False, **FAST
    )
    assert emb.calls == calls  # all three splits came from the cache
    assert first.results["counting"]["tones"].runs == second.results["counting"]["tones"].runs
    assert len(list(cache.rglob("*.npy"))) == 3 and len(list(cache.rglob("*.json"))) == 3
    other = CountingEmbedder(cache_key="counting-v2")  # another model: never reuses v1's files
    run_evaluation(
        [other], [tasks_root / "tones"], seeds=1, cache_dir=cache, progress=False, **FAST
    )
    assert other.calls == 3


def test_cache_detects_changed_audio(tones_copy, tmp_path):
    task = read_task(tones_copy)
    emb = CountingEmbedder()
    before = embed_split(emb, task, "valid", tmp_path / "c")
    path = task.audio_path("valid", "valid_000.wav")
    sf.write(path, np.zeros(8000, dtype=np.float32), SR)  # other content, size and mtime
    after = embed_split(emb, task, "valid", tmp_path / "c")
    assert emb.calls == 2 and not np.array_equal(before, after)


def test_unreadable_audio_stops_evaluation(tones_copy):
    (tones_copy / "16000" / "valid" / "valid_003.wav").write_bytes(b"RIFF garbage")
    with pytest.raises(InvalidAudioError, match=r"tones, split valid: .*valid_003\.wav"):
        run_evaluation([LogMelStatsEmbedder()], [tones_copy], seeds=1, progress=False, **FAST)


def test_report_files(tasks_root, tmp_path):
    out = tmp_path / "report"
    result = run_evaluation(
        [LogMelStatsEmbedder(), MeanOnlyEmbedder()],
        [tasks_root],
        out_dir=out,
        seeds=2,
        progress=False,
        **FAST,
    )
    assert result.tasks == ["kfold", "mix", "tones"] and result.models == ["logmel", "mean-only"]
    for name in ("results.md", "summary.csv", "scores.csv", "results.json", "results.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert md == markdown_table(result)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0] == "| Model | kfold | mix | tones | s(m) |"
    assert [r.split(" | ")[0] for r in rows[2:]] == ["| logmel", "| mean-only"]
    mean, ci = result.results["logmel"]["tones"].summary()
    assert f"{100 * mean:.1f} ± {100 * ci:.1f}" in rows[2]
    assert rows[2].endswith(f"| {result.normalized['logmel']:.1f} |")
    data = json.loads((out / "results.json").read_text())
    r = data["results"]["mean-only"]["mix"]
    assert r["primary_metric"] == "mAP" and len(r["seed_scores"]) == 2 and len(r["runs"]) == 2
    assert data["normalized_score"] == pytest.approx(result.normalized)
    with (out / "summary.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 6
    with (out / "scores.csv").open() as fh:
        # per model: seeds x (3 folds x 1 metric + 4 metrics + 1 metric)
        assert len(list(csv.DictReader(fh))) == 2 * 2 * (3 + 4 + 1)


def test_cli_evaluate(tasks_root, tmp_path, capsys):
    from audiomaepp.cli import evaluate

    parser = argparse.ArgumentParser()
    evaluate.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(
        [
            "evaluate",
            "--tasks",
            str(tasks_root / "tones"),
            "--models",
            "logmel",
            "--out",
            str(out),
            "--seeds",
            "2",
            "--max-epochs",
            "6",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| Model | tones | s(m) |" in printed and "| logmel |" in printed
    assert (out / "results.md").is_file() and any((out / "cache").rglob("*.npy"))
    assert json.loads((out / "results.json").read_text())["config"]["probe"]["standardize"] is False
    dev = parser.parse_args(
        [
            "evaluate",
            "--tasks",
            str(tasks_root / "tones"),
            "--models",
            "logmel",
            "--out",
            str(tmp_path / "dev"),
            "--seeds",
            "2",
            "--max-epochs",
            "3",
            "--quiet",
            "--device",
            "cpu",
            "--standardize",
        ]
    )
    assert dev.func(dev) == 0 and "| logmel |" in capsys.readouterr().out
    assert (
        json.loads((tmp_path / "dev" / "results.json").read_text())["config"]["probe"][
            "standardize"
        ]
        is True
    )
    bad = parser.parse_args(
        [
            "evaluate",
            "--tasks",
            str(tasks_root / "tones"),
            "--models",
            str(tmp_path / "no-model"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert bad.func(bad) == 2
    assert "not a model directory" in capsys.readouterr().err
    typo = parser.parse_args(
        [
            "evaluate",
            "--tasks",
            str(tasks_root / "tones"),
            "--models",
            "random:tinyy",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert typo.func(typo) == 2
    assert "unknown preset 'tinyy'" in capsys.readouterr().err
