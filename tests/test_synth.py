"""Synthetic demo corpus: determinism, HEAR layout, labels, split hygiene, learnability, caching."""

from __future__ import annotations

import csv
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiomaepp.synth import (
    FAMILIES,
    PITCH_CLASSES,
    SAMPLE_RATE,
    TASKS,
    CorpusConfig,
    draw_timbre,
    generate_corpus,
    load_corpus,
    render_event,
)
from audiomaepp.synth.sounds import midi_to_hz, pitch_class

HEAR_KEYS = {
    "task_name",
    "version",
    "embedding_type",
    "prediction_type",
    "split_mode",
    "sample_duration",
    "evaluation",
    "download_name",
    "default_mode",
    "modes",
    "sample_rate",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small corpus with enough clips per task for the learnability check (~3 s to make)."""
    return generate_corpus(
        tmp_path_factory.mktemp("synth") / "c", CorpusConfig.small(n_per_task=120)
    )


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """Two tiny corpora with the same seed, the second made by two worker processes."""
    cfg = CorpusConfig.small(n_per_task=10, n_pool=3)
    base = tmp_path_factory.mktemp("det")
    return cfg, generate_corpus(base / "a", cfg), generate_corpus(base / "b", cfg, workers=2)


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def meta(info, task: str) -> dict:
    return json.loads((info.root / "meta" / f"{task}.json").read_text())


def vocabulary(task_dir: Path) -> list[str]:
    with open(task_dir / "labelvocabulary.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["idx", "label"]
    assert [int(r[0]) for r in rows[1:]] == list(range(len(rows) - 1))
    return [r[1] for r in rows[1:]]


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_is_byte_identical_even_in_parallel(tiny_pair):
    _, a, b = tiny_pair
    fa, fb = files_of(a.root), files_of(b.root)
    assert len([k for k in fa if k.endswith(".wav")]) == 3 + 4 * 10
    assert fa.keys() == fb.keys()
    assert [k for k in fa if fa[k] != fb[k]] == []


def test_different_seed_changes_every_clip(tiny_pair, tmp_path):
    cfg, a, _ = tiny_pair
    c = generate_corpus(
        tmp_path / "c", CorpusConfig.small(seed=cfg.seed + 1, n_per_task=10, n_pool=3)
    )
    fa, fc = files_of(a.root), files_of(c.root)
    wavs = [k for k in fa if k.endswith(".wav")]
    assert wavs and all(fa[k] != fc[k] for k in wavs)


# --- HEAR layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_hear_task_files_present_and_readable(corpus, task):
    task_dir = corpus.task_dirs[task.name]
    md = json.loads((task_dir / "task_metadata.json").read_text())
    assert HEAR_KEYS <= md.keys()
    assert (md["task_name"], md["embedding_type"], md["sample_rate"]) == (task.name, "scene", 16000)
    assert md["prediction_type"] in ("multiclass", "multilabel") and md["evaluation"]
    assert md["sample_duration"] == corpus.config.clip_seconds
    vocab = set(vocabulary(task_dir))
    n_frames = int(corpus.config.clip_seconds * SAMPLE_RATE)
    total = 0
    for split in task.splits:
        labels = json.loads((task_dir / f"{split}.json").read_text())
        audio_dir = task_dir / "16000" / split
        assert sorted(p.name for p in audio_dir.glob("*.wav")) == sorted(labels)
        for name, labs in labels.items():
            assert labs and set(labs) <= vocab, (name, labs)
            if md["prediction_type"] == "multiclass":
                assert len(labs) == 1
            info = sf.info(str(audio_dir / name))
            assert (info.samplerate, info.channels, info.frames) == (16000, 1, n_frames)
        total += len(labels)
    assert total == corpus.counts[task.name] == corpus.config.n_per_task


def test_every_label_is_used_in_training_split(corpus):
    for task in TASKS:
        train = json.loads((corpus.task_dirs[task.name] / f"{task.splits[0]}.json").read_text())
        used = {lab for labs in train.values() for lab in labs}
        assert used == set(vocabulary(corpus.task_dirs[task.name])), task.name


def test_kfold_task_has_five_folds_covering_each_clip_once(corpus):
    task_dir = corpus.task_dirs["synth_count"]
    md = json.loads((task_dir / "task_metadata.json").read_text())
    assert (md["split_mode"], md["nfolds"]) == ("new_split_kfold", 5)
    folds = [json.loads((task_dir / f"fold{i:02d}.json").read_text()) for i in range(5)]
    names = [n for fold in folds for n in fold]
    on_disk = sorted(p.name for p in (task_dir / "16000").rglob("*.wav"))
    assert len(names) == len(set(names)) == corpus.config.n_per_task
    assert sorted(names) == on_disk
    assert all(len(f) == corpus.config.n_per_task // 5 for f in folds)


def test_corpus_json_describes_what_was_written(corpus):
    doc = json.loads((corpus.root / "corpus.json").read_text())
    assert doc["config"]["n_per_task"] == 120 and doc["counts"]["pool"] == 6
    assert set(doc["tasks"]) == {t.name for t in TASKS}
    assert len(list(corpus.pool_dir.glob("*.wav"))) == 6
    for p in corpus.pool_dir.glob("*.wav"):
        assert sf.info(str(p)).frames == int(corpus.config.pool_clip_seconds * SAMPLE_RATE)


# --- audio ----------------------------------------------------------------------------------------


def test_audio_finite_in_range_and_peak_normalised(corpus):
    paths = list(corpus.pool_dir.glob("*.wav")) + list((corpus.root / "tasks").rglob("*.wav"))
    assert len(paths) == 6 + 4 * 120
    for p in paths:
        x, sr = sf.read(str(p), dtype="float32")
        assert sr == SAMPLE_RATE and x.ndim == 1
        assert np.isfinite(x).all()
        assert 0.49 <= np.abs(x).max() <= 0.91, p


@pytest.mark.parametrize("family", FAMILIES)
def test_events_are_finite_and_unit_peak_for_any_length(family):
    rng = np.random.default_rng(0)
    for timbre_id in range(30):
        timbre = draw_timbre(family, timbre_id, seed=0)
        for n in (1, 7, 400, 20_000):
            x = render_event(timbre, n, rng, pitch=float(rng.uniform(40, 88)))
            assert x.shape == (n,) and np.isfinite(x).all()
            assert np.abs(x).max() <= 1.0 + 1e-9
        assert np.abs(x).max() == pytest.approx(1.0)


def test_timbre_id_names_a_fixed_source():
    a, b = draw_timbre("harmonic", 5, seed=0), draw_timbre("harmonic", 5, seed=0)
    assert a == b
    assert draw_timbre("harmonic", 6, seed=0) != a and draw_timbre("harmonic", 5, seed=1) != a


def test_sample_rate_matches_front_end():
    from audiomaepp.frontend import SAMPLE_RATE as FRONTEND_RATE

    assert SAMPLE_RATE == FRONTEND_RATE == CorpusConfig().sample_rate
    with pytest.raises(ValueError):
        CorpusConfig(sample_rate=22050)


# --- labels vs generating parameters --------------------------------------------------------------


def test_labels_match_generating_parameters(corpus):
    for task in TASKS:
        plans, task_dir = meta(corpus, task.name), corpus.task_dirs[task.name]
        for split in task.splits:
            written = json.loads((task_dir / f"{split}.json").read_text())
            for name, plan in plans[split].items():
                ev = plan["events"]
                assert written[name] == plan["labels"]
                expected = {
                    "synth_pitch": lambda ev=ev: [pitch_class(ev[0]["pitch"])],
                    "synth_family": lambda ev=ev: [ev[0]["family"]],
                    "synth_count": lambda ev=ev: [str(len(ev))],
                    "synth_mix": lambda ev=ev: sorted(
                        {e["family"] for e in ev}, key=FAMILIES.index
                    ),
                }[task.name]()
                assert plan["labels"] == expected, (task.name, name)
                if task.name == "synth_pitch":
                    assert ev[0]["family"] == "harmonic" and len(ev) == 1


def test_count_events_do_not_overlap(corpus):
    for split, plans in meta(corpus, "synth_count").items():
        for plan in plans.values():
            spans = sorted((e["onset"], e["onset"] + e["duration"]) for e in plan["events"])
            assert all(b[0] - a[1] >= 0.05 for a, b in zip(spans, spans[1:], strict=False)), split
            assert spans[-1][1] <= corpus.config.clip_seconds


def estimate_pitch_class(x: np.ndarray) -> str:
    """Harmonic-sum pitch estimate: the MIDI note whose first 6 partials carry most log energy."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), 1 << 15))
    log_spec = np.log(spec + 1e-3 * spec.max())
    bin_hz = SAMPLE_RATE / (1 << 15)
    notes = np.arange(40, 90)
    scores = []
    for note in notes:
        partials = [k * midi_to_hz(note) for k in range(1, 7) if k * midi_to_hz(note) < 7000]
        # +-1 % window around each partial tolerates the timbres' slight inharmonicity
        scores.append(
            np.mean(
                [
                    log_spec[int(f / bin_hz * 0.99) : int(f / bin_hz * 1.01) + 2].max()
                    for f in partials
                ]
            )
        )
    return PITCH_CLASSES[notes[int(np.argmax(scores))] % 12]


def test_pitch_label_is_audible(corpus):
    task_dir, hits, n = corpus.task_dirs["synth_pitch"], 0, 0
    for split in ("valid", "test"):
        for name, labels in json.loads((task_dir / f"{split}.json").read_text()).items():
            x, _ = sf.read(str(task_dir / "16000" / split / name))
            hits += estimate_pitch_class(x) == labels[0]
            n += 1
    assert hits / n >= 0.9


# --- split hygiene --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_no_timbre_or_background_crosses_splits(corpus, task):
    plans = meta(corpus, task.name)
    timbres = {
        s: {e["timbre_id"] for p in plans[s].values() for e in p["events"]} for s in task.splits
    }
    backgrounds = {s: {p["background_id"] for p in plans[s].values()} for s in task.splits}
    assert {s: sorted(v) for s, v in timbres.items()} == corpus.timbre_ids[task.name]
    assert {s: sorted(v) for s, v in backgrounds.items()} == corpus.background_ids[task.name]
    for a, b in combinations(task.splits, 2):
        assert not timbres[a] & timbres[b], (a, b)
        assert not backgrounds[a] & backgrounds[b], (a, b)
    pool = set(corpus.timbre_ids["pool"]["pool"])
    assert pool and not pool & set().union(*timbres.values())
    assert all(len(v) > 1 for v in timbres.values())  # each split really has several sources


def test_timbres_recur_within_a_split(corpus):
    plans = meta(corpus, "synth_pitch")["train"]
    ids = [p["events"][0]["timbre_id"] for p in plans.values()]
    assert len(set(ids)) < len(ids)


# --- learnability ---------------------------------------------------------------------------------


def log_spectrum(path: Path, n_fft: int = 4096) -> np.ndarray:
    """Mean log-magnitude spectrum over 4096-sample Hann frames (hop 1024), shape ``(2049,)``."""
    x, _ = sf.read(str(path), dtype="float32")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::1024] * np.hanning(n_fft)
    return np.log(np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0) + 1e-4)


def features(task_dir: Path, splits: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    items = [
        (s, n, labs[0])
        for s in splits
        for n, labs in json.loads((task_dir / f"{s}.json").read_text()).items()
    ]
    x = np.stack([log_spectrum(task_dir / "16000" / s / n) for s, n, _ in items])
    return x, np.array([lab for _, _, lab in items])


def test_pitch_task_learnable_by_nearest_centroid(corpus):
    """Unseen timbres: a nearest-centroid probe on log spectra must beat 12-class chance 3x."""
    task_dir = corpus.task_dirs["synth_pitch"]
    x_train, y_train = features(task_dir, ("train",))
    x_eval, y_eval = features(task_dir, ("valid", "test"))
    classes = np.array(PITCH_CLASSES)
    centroids = np.stack([x_train[y_train == c].mean(axis=0) for c in classes])
    pred = classes[np.argmin(((x_eval[:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    assert (pred == y_eval).mean() >= 3 / len(classes)


# --- caching --------------------------------------------------------------------------------------


def test_existing_corpus_is_reused_not_rewritten(tiny_pair):
    cfg, a, _ = tiny_pair
    wav = next(a.pool_dir.glob("*.wav"))
    before = wav.stat().st_mtime_ns
    again = generate_corpus(a.root, cfg)
    assert not again.generated and wav.stat().st_mtime_ns == before
    assert again.timbre_ids == a.timbre_ids and load_corpus(a.root, cfg) is not None
    assert load_corpus(a.root, CorpusConfig.small(seed=9, n_per_task=10, n_pool=3)) is None


def test_incomplete_or_changed_corpus_is_regenerated(tiny_pair, tmp_path):
    cfg, a, _ = tiny_pair
    c = generate_corpus(tmp_path / "c", cfg)
    next(c.pool_dir.glob("*.wav")).unlink()  # simulate a damaged corpus
    assert load_corpus(c.root, cfg) is None
    again = generate_corpus(c.root, cfg)
    assert again.generated and files_of(c.root) == files_of(a.root)
    bigger = CorpusConfig.small(n_per_task=10, n_pool=4)
    assert generate_corpus(c.root, bigger).counts["pool"] == 4
    assert len(list(c.pool_dir.glob("*.wav"))) == 4


def test_refuses_to_write_into_unrelated_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_corpus(tmp_path, CorpusConfig.small(n_per_task=10, n_pool=1))
    assert (tmp_path / "precious.txt").read_text() == "keep me"
