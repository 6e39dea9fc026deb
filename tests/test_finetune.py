"""Fine-tuning: the recipe's pieces, the trainer on the shared loop, the classifier directory, the
``finetune`` / ``predict`` commands and ``evaluate --mode finetune``. Micro models, tiny tone tasks
(0.5-s clips whose tone frequency is the label), a few dozen steps: CPU only.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from audiomaepp import AudioMAE
from audiomaepp.cli.main import main
from audiomaepp.errors import CheckpointError
from audiomaepp.finetune import (
    AudioClassifier,
    FinetuneConfig,
    LabelledSplit,
    build_classifier,
    finetune,
    load_task,
)
from audiomaepp.finetune.augment import spec_augment
from audiomaepp.finetune.data import (
    LabelledCropDataset,
    clip_logmel,
    clip_windows,
    sampling_weights,
    window_starts,
)
from audiomaepp.finetune.trainer import ClassifierLoss, layer_decay_groups
from audiomaepp.training.schedule import lr_at

from .conftest import micro_config

SR = 16_000
FREQS = {"low": 300.0, "mid": 1200.0, "high": 4000.0}
MICRO = dict(
    embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2
)


def tone(
    rng: np.random.Generator, labels: list[str], seconds: float = 0.5, sr: int = SR
) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.01 * rng.standard_normal(len(t))
    for lab in labels:
        x += rng.uniform(0.2, 0.4) * np.sin(
            2 * np.pi * FREQS[lab] * (1 + rng.uniform(-0.02, 0.02)) * t
        )
    return x.astype(np.float32)


def write_task(
    root: Path, splits: dict[str, int], mode: str = "trainvaltest", seed: int = 0
) -> Path:
    """A HEAR multiclass task: ``splits[name]`` clips per split, classes in turn."""
    rng = np.random.default_rng(seed)
    labels = list(FREQS)
    root.mkdir(parents=True)
    meta = {
        "task_name": root.name,
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "split_mode": mode,
        "nfolds": None if mode == "trainvaltest" else len(splits),
        "evaluation": ["top1_acc"],
    }
    (root / "task_metadata.json").write_text(json.dumps(meta))
    (root / "labelvocabulary.csv").write_text(
        "idx,label\n" + "".join(f"{i},{x}\n" for i, x in enumerate(labels))
    )
    for split, n in splits.items():
        (root / "16000" / split).mkdir(parents=True)
        entries = {}
        for i in range(n):
            lab = labels[i % 3]
            sf.write(root / "16000" / split / f"{i:03d}.wav", tone(rng, [lab]), SR)
            entries[f"{i:03d}.wav"] = [lab]
        (root / f"{split}.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a CPU shared with other jobs, two threads spin-wait and run ~10x
    slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    return write_task(
        tmp_path_factory.mktemp("ft") / "tones", {"train": 24, "valid": 9, "test": 15}
    )


def quick(task: Path, out: Path, **changes) -> FinetuneConfig:
    """A micro random-init model, small batches, few steps, no workers or progress bars."""
    base = dict(
        model="random:tiny",
        model_overrides=MICRO,
        task=str(task),
        out_dir=str(out),
        batch_size=8,
        lr=2e-3,
        max_steps=24,
        warmup_epochs=1.0,
        epochs=8,
        num_workers=0,
        progress=False,
        seed=0,
    )
    return FinetuneConfig.from_dict({**base, **changes})


# ---- recipe pieces -------------------------------------------------------------------------------
def test_window_starts_cover_the_clip_without_padding_windows():
    assert window_starts(50) == [0]  # short: one zero-padded window
    assert window_starts(201) == [0]  # a 1-frame tail is dropped
    assert window_starts(400) == [0, 200]
    assert window_starts(701) == [0, 200, 400, 501]  # a >= 1-s tail: the clip's last 200 frames
    lms = torch.randn(330, 80)
    wins = clip_windows(lms)
    assert wins.shape == (2, 1, 200, 80)
    assert torch.equal(wins[1, 0], lms[130:])


def test_sampling_weights_balance_rare_labels():
    y = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    w = sampling_weights(y)
    assert w.sum() == pytest.approx(1.0)
    assert w[3] == pytest.approx(
        w[:3].sum()
    )  # the one rare clip is drawn as often as all common ones


def test_spec_augment_masks_one_band_and_one_span():
    rng = np.random.default_rng(0)
    x = torch.ones(200, 80)
    out = spec_augment(x, rng, freq_mask=30, time_mask=40)
    zero_cols = (out == 0).all(dim=0).sum().item()
    zero_rows = (out == 0).all(dim=1).sum().item()
    assert 0 < zero_cols <= 30 and 0 < zero_rows <= 40
    assert torch.equal(spec_augment(x, rng, 0, 0), x)
    assert torch.equal(x, torch.ones(200, 80))  # the input is not modified


def test_layer_decay_scales_earlier_layers_down():
    clf = build_classifier("random:tiny", ["a", "b"], "multiclass", overrides=MICRO)
    groups = layer_decay_groups(clf, 0.05, 0.5)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["head.fc.weight"] == 1.0 and scale["encoder.norm.weight"] == 1.0
    assert scale["encoder.blocks.1.attn.qkv.weight"] == 0.5
    assert scale["encoder.blocks.0.attn.qkv.weight"] == 0.25
    assert scale["encoder.patch_embed.proj.weight"] == 0.125
    assert "encoder.pos_embed" not in scale  # the fixed table is not optimised
    decays = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert decays["head.fc.weight"] == 0.05 and decays["head.fc.bias"] == 0.0


def test_encoder_weights_are_loaded_exactly_and_drop_path_only_trains(tmp_path):
    torch.manual_seed(3)
    mae = AudioMAE(micro_config())
    mae.save_pretrained(tmp_path / "enc")
    clf = build_classifier(str(tmp_path / "enc"), ["a", "b", "c"], "multiclass", drop_path=0.5)
    for k, v in mae.encoder.state_dict().items():
        assert torch.equal(clf.encoder.state_dict()[k], v), k
    x = torch.randn(3, 1, 200, 80)
    clf.eval()
    with torch.no_grad():
        assert torch.allclose(clf.features(x), mae.encode(x).mean(dim=1), atol=1e-6)
        clf.train()
        torch.manual_seed(0)
        a = clf.features(x)
        torch.manual_seed(1)
        b = clf.features(x)
    assert not torch.allclose(a, b)  # stochastic depth draws differ in training mode


def test_classifier_directory_round_trip_and_refusals(tmp_path):
    clf = build_classifier(
        "random:tiny", ["dog", "cat"], "multilabel", overrides=MICRO, pooling="cls"
    )
    clf.save_pretrained(tmp_path / "clf")
    assert json.loads((tmp_path / "clf" / "labels.json").read_text()) == ["dog", "cat"]
    same = AudioClassifier.from_pretrained(tmp_path / "clf")
    x = torch.randn(2, 1, 200, 80)
    with torch.no_grad():
        assert torch.equal(same(x), clf.eval()(x))
    assert same.config.pooling == "cls" and same.config.prediction_type == "multilabel"
    AudioMAE(micro_config()).save_pretrained(tmp_path / "enc")
    with pytest.raises(CheckpointError, match="classifier"):
        AudioClassifier.from_pretrained(tmp_path / "enc")


# ---- training ------------------------------------------------------------------------------------
def test_finetune_beats_chance_and_writes_a_loadable_classifier(tones, tmp_path):
    result = finetune(quick(tones, tmp_path / "run", max_steps=48))
    assert result.finished
    top1 = result.mean["top1_acc"]
    assert top1 >= 0.8, f"top-1 {top1} on an easy 3-class task (chance 0.33)"
    for name in (
        "report.md",
        "report.json",
        "per_class.png",
        "metrics.jsonl",
        "best/labels.json",
        "test.json",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(doc["mean"]) >= {"top1_acc", "mAP", "d_prime"}
    assert set(doc["per_class_ap"]) == set(FREQS)
    assert np.sum(doc["confusion"]) == 15
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records if "valid_top1_acc" in r] == list(
        range(3, 49, 3)
    )  # every epoch
    clf = AudioClassifier.from_pretrained(result.model_dir)
    rng = np.random.default_rng(9)
    hits = [
        clf.predict(tone(rng, [lab], 1.3), SR).labels == [lab] for lab in FREQS for _ in range(3)
    ]
    assert sum(hits) >= 7


def test_frozen_mode_equals_a_probe_trained_on_the_same_features(tones, tmp_path):
    steps, n_train = 5, 24
    cfg = quick(
        tones,
        tmp_path / "frozen",
        linear_probe=True,
        mixup=0.0,
        freq_mask=0,
        time_mask=0,
        batch_size=n_train,
        max_steps=steps,
        epochs=steps,
        warmup_epochs=2.0,
        lr=5e-2,
        pooling="bands",
        head="linear",  # not the MLP: its pre-BatchNorm bias has no gradient but rounding,
    )  # which Adam turns into lr-sized steps, so its weights could not be compared
    result = finetune(cfg)
    trained = AudioClassifier.from_pretrained(
        tmp_path / "frozen" / "model"
    )  # the last step's weights
    # the same start, then the head alone trained by hand on precomputed features
    start = build_classifier(
        cfg.model,
        load_task(tones).labels,
        "multiclass",
        pooling="bands",
        head="linear",
        linear_probe=True,
        seed=cfg.loop.seed,
        overrides=MICRO,
    )
    for k, v in start.encoder.state_dict().items():
        assert torch.equal(trained.encoder.state_dict()[k], v), f"frozen encoder changed: {k}"
    task = load_task(tones)
    split = task.splits["train"]
    with torch.no_grad():
        feats = start.eval().features(
            torch.cat(
                [  # float16-rounded log-mels, as the training stream's cache keeps them
                    clip_windows(clip_logmel(sf.read(p, dtype="float32")[0]).half().float())
                    for p in split.paths
                ]
            )
        )
    head = start.head
    opt = torch.optim.AdamW(
        [
            {"params": [head.fc.weight], "weight_decay": cfg.loop.weight_decay},
            {"params": [head.norm.weight, head.norm.bias, head.fc.bias], "weight_decay": 0.0},
        ],
        lr=cfg.loop.lr,
        betas=cfg.loop.betas,
        eps=1e-8,
    )
    y = torch.from_numpy(split.targets)
    warmup = round(steps * cfg.loop.warmup_epochs / cfg.loop.epochs)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.loop.lr, warmup, steps, cfg.loop.min_lr)
        loss = F.cross_entropy(head(feats), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in head.state_dict().items():
        assert torch.allclose(trained.head.state_dict()[name], p, atol=1e-5), name
    assert result.finished


def test_resume_mid_run_gives_the_same_final_metrics(tones, tmp_path):
    whole = finetune(quick(tones, tmp_path / "whole", eval_every=4, save_every=4))
    first = finetune(quick(tones, tmp_path / "split", eval_every=4, save_every=4, stop_after=10))
    assert not first.finished and not (tmp_path / "split" / "report.json").exists()
    second = finetune(quick(tones, tmp_path / "split", eval_every=4, save_every=4, resume="auto"))
    assert second.finished
    assert second.folds[0].test == whole.folds[0].test
    assert second.folds[0].best_step == whole.folds[0].best_step
    a = AudioClassifier.from_pretrained(tmp_path / "whole" / "model").state_dict()
    b = AudioClassifier.from_pretrained(tmp_path / "split" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_converted_release_checkpoint_finetunes(converted_dir, tones, tmp_path):
    clf = build_classifier(str(converted_dir), ["low", "mid", "high"], "multiclass")
    mae = AudioMAE.from_pretrained(converted_dir)
    assert all(
        torch.equal(clf.encoder.state_dict()[k], v) for k, v in mae.encoder.state_dict().items()
    )
    result = finetune(
        quick(
            tones,
            tmp_path / "rel",
            model=str(converted_dir),
            model_overrides={},
            max_steps=3,
            batch_size=4,
            eval_every=3,
        )
    )
    assert result.finished and 0.0 <= result.mean["top1_acc"] <= 1.0
    tuned = AudioClassifier.from_pretrained(tmp_path / "rel" / "model")
    assert tuned.config.encoder == mae.config
    assert not torch.equal(
        tuned.encoder.blocks[-1].attn.qkv.weight, mae.encoder.blocks[-1].attn.qkv.weight
    )


def test_kfold_task_runs_every_fold_and_reports_the_mean(tmp_path):
    task = write_task(
        tmp_path / "kf", {"fold00": 9, "fold01": 9, "fold02": 9}, mode="new_split_kfold"
    )
    result = finetune(quick(task, tmp_path / "run", max_steps=4))
    assert [f.fold for f in result.folds] == ["fold00", "fold01", "fold02"]
    assert [f.valid for f in result.folds] == ["fold01", "fold02", "fold00"]
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    assert doc["mean"]["top1_acc"] == pytest.approx(
        np.mean([f.test["top1_acc"] for f in result.folds])
    )
    assert all(
        (tmp_path / "run" / "folds" / f / "best" / "model.safetensors").is_file()
        for f in ("fold00", "fold01", "fold02")
    )


def test_csv_manifest_multilabel_with_weighted_sampling(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(30):
        labels = ["low", "mid"] if i % 3 == 0 else (["high"] if i % 3 == 1 else ["low"])
        sf.write(tmp_path / f"c{i}.wav", tone(rng, labels), SR)
        rows.append(f"c{i}.wav,{';'.join(labels)}")
    (tmp_path / "set.csv").write_text("path,labels\n" + "\n".join(rows) + "\n")
    task = load_task(tmp_path / "set.csv")
    assert task.prediction_type == "multilabel" and task.primary_metric == "mAP"
    assert sum(len(s) for s in task.splits.values()) == 30
    result = finetune(quick(tmp_path / "set.csv", tmp_path / "run", max_steps=6))
    assert result.finished and not math.isnan(result.mean["mAP"])


def test_weighted_sampling_draws_rare_classes_as_often_as_common_ones():
    y = np.zeros((30, 3), dtype=np.float32)
    y[:20, 0], y[20:25, 1], y[25:, 2] = 1, 1, 1  # 4 : 1 : 1
    split = LabelledSplit([Path(f"{i}.wav") for i in range(30)], y)
    plain = y[LabelledCropDataset(split, 600).order(0)].sum(axis=0)
    weighted = y[LabelledCropDataset(split, 600, weights=sampling_weights(y)).order(0)].sum(axis=0)
    assert plain.tolist() == [400, 100, 100]  # permutations: every clip once per pass
    assert weighted.max() / weighted.min() < 1.3


def test_finetune_cli(tones, tmp_path, capsys):
    rc = main(
        [
            "finetune",
            "--model",
            "random:tiny",
            "--task",
            str(tones),
            "--out",
            str(tmp_path / "run"),
            "--model-set",
            "embed_dim=32",
            "--model-set",
            "depth=2",
            "--model-set",
            "num_heads=2",
            "--max-steps",
            "3",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "Fine-tuning report: tones" in capsys.readouterr().out
    rc = main(
        [
            "finetune",
            "--model",
            str(tmp_path / "nope"),
            "--task",
            str(tones),
            "--out",
            str(tmp_path / "x"),
            "--num-workers",
            "0",
        ]
    )
    assert rc == 2


# ---- predict -------------------------------------------------------------------------------------
def test_predict_long_short_stereo_44k_and_corrupt_files(tmp_path, capsys):
    clf = build_classifier("random:tiny", list(FREQS), "multiclass", overrides=MICRO)
    clf.save_pretrained(tmp_path / "clf")
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    sf.write(d / "long.wav", tone(rng, ["low"], 7.0), SR)  # 701 frames: 4 windows
    sf.write(d / "short.flac", tone(rng, ["mid"], 0.3), SR)  # 1 zero-padded window
    stereo = np.stack([tone(rng, ["high"], 3.0, 44_100), tone(rng, ["high"], 3.0, 44_100)], axis=1)
    sf.write(d / "stereo44k.wav", stereo, 44_100)  # 301 frames at 16 kHz: 2 windows
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" * 10)
    (d / "empty.wav").write_bytes(b"")
    out = tmp_path / "preds.csv"
    rc = main(
        [
            "predict",
            str(tmp_path / "clf"),
            str(d),
            "--out",
            str(out),
            "--segments",
            "--top-k",
            "2",
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    by_file: dict[str, list[dict]] = {}
    for r in rows:
        by_file.setdefault(Path(r["path"]).name, []).append(r)
    assert sorted(by_file) == ["long.wav", "short.flac", "stereo44k.wav"]
    assert [
        len(v) - 1 for v in (by_file["long.wav"], by_file["short.flac"], by_file["stereo44k.wav"])
    ] == [4, 1, 2]
    assert [r["start_s"] for r in by_file["long.wav"][1:]] == ["0.00", "2.00", "4.00", "5.01"]
    # ends: 2-s windows, never past the clip (701 frames = 7.01 s); a short clip's window is 2 s
    assert [r["end_s"] for r in by_file["long.wav"]] == ["7.01", "2.00", "4.00", "6.00", "7.01"]
    assert [r["end_s"] for r in by_file["short.flac"]] == ["0.31", "2.00"]  # 31 frames
    skipped = list(csv.DictReader(out.with_suffix(".skipped.csv").open()))
    assert sorted(Path(r["path"]).name for r in skipped) == ["corrupt.wav", "empty.wav"]
    assert all(r["reason"] for r in skipped)
    # the CLI and the Python API agree on the stereo 44.1 kHz file
    wave, sr = sf.read(d / "stereo44k.wav", dtype="float32")
    pred = clf.predict(wave, sr)
    clip_row = by_file["stereo44k.wav"][0]
    assert clip_row["segment"] == "clip" and clip_row["predicted"] == pred.labels[0]
    assert float(clip_row["score_1"]) == pytest.approx(pred.top(1)[0][1], abs=1e-4)
    assert np.allclose(pred.segment_scores.mean(axis=0), [pred.scores[x] for x in clf.labels])
    assert (
        main(
            [
                "predict",
                str(tmp_path / "clf"),
                str(d / "corrupt.wav"),
                "--out",
                str(tmp_path / "p2.csv"),
                "--workers",
                "1",
            ]
        )
        == 1
    )  # nothing readable: failure exit, still no crash


def test_recipe_scales_with_the_training_set_and_keeps_what_the_user_set():
    import math

    from audiomaepp.finetune.recipe import resolve

    base = FinetuneConfig.from_dict(dict(model="m", task="t", batch_size=32))
    small, large = resolve(base, 180), resolve(base, 200_000)
    assert (small.recipe, resolve(base, 5_000).recipe, large.recipe) == ("small", "medium", "large")
    assert small.loop.epochs * math.ceil(180 / 32) >= 300  # a 180-clip set still gets 300 steps
    assert large.loop.epochs == 50 and large.mixup == 0.5 and large.freq_mask == 30  # MAE's AS
    assert small.mixup == 0.0 and small.freq_mask < large.freq_mask
    assert small.head_lr_scale > large.head_lr_scale == 1.0
    assert 0 < small.loop.warmup_epochs < small.loop.epochs / 5
    mine = resolve(base.replace(epochs=7, mixup=0.3, head_lr_scale=2.0, recipe="large"), 180)
    assert (mine.loop.epochs, mine.mixup, mine.head_lr_scale, mine.recipe) == (7, 0.3, 2.0, "large")
    frozen = resolve(base.replace(linear_probe=True), 180)
    assert frozen.loop.peak_lr() > small.loop.peak_lr() and frozen.head_lr_scale == 1.0
    assert resolve(small, 200_000) == small  # resolved once: the recipe is named, nothing left
    with pytest.raises(ValueError, match="recipe"):
        FinetuneConfig(recipe="huge")


@pytest.mark.parametrize("layout", ["time_major", "release"])
def test_bands_pooling_is_the_probes_scene_embedding(layout):
    """On a 2-s clip the ``bands`` features are the scene embedding the MLP probe sees."""
    from audiomaepp.embedding import Embedder
    from audiomaepp.model import AudioMAEConfig

    torch.manual_seed(0)
    mae = AudioMAE(AudioMAEConfig.preset("tiny", **MICRO, token_layout=layout)).eval()
    clf = AudioClassifier.from_encoder(mae, ["a", "b"], "multiclass", pooling="bands").eval()
    wave = tone(np.random.default_rng(1), ["mid"], seconds=31_999 / SR)  # 200 log-mel frames
    with torch.no_grad():
        feats = clf.features(clip_windows(clip_logmel(wave)))
    scene = Embedder(mae, dtype="float32").scene_embeddings(torch.from_numpy(wave)[None])
    assert feats.shape == scene.shape == (1, 5 * MICRO["embed_dim"])
    assert torch.allclose(feats, scene, atol=1e-5)
    # the band layout matters: mean pooling over all tokens is the mean of the five parts
    mean = AudioClassifier.from_encoder(mae, ["a", "b"], "multiclass", pooling="mean").eval()
    with torch.no_grad():
        pooled = mean.features(clip_windows(clip_logmel(wave)))
    assert torch.allclose(pooled, feats.reshape(1, 5, -1).mean(1), atol=1e-5)


def test_mlp_head_is_the_probes_mlp():
    """The ``mlp`` head starts as the probe's MLP of the same seed and computes the same logits."""
    from audiomaepp.evaluation.probe import init_weights, predict

    clf = build_classifier(
        "random:tiny",
        ["a", "b", "c"],
        "multiclass",
        overrides=MICRO,
        pooling="bands",
        head="mlp",
        head_hidden=16,
        seed=3,
    ).eval()
    w = init_weights(5 * MICRO["embed_dim"], 3, 16, torch.Generator().manual_seed(3))
    feats = torch.randn(4, 5 * MICRO["embed_dim"])
    with torch.no_grad():
        ours = clf.head(feats).softmax(-1).numpy()
    np.testing.assert_allclose(ours, predict(w, feats, "multiclass"), atol=1e-5)


def test_loss_is_soft_cross_entropy_with_smoothing():
    clf = build_classifier("random:tiny", ["a", "b", "c"], "multiclass", overrides=MICRO)
    loss = ClassifierLoss(clf, 0.1)
    x = torch.randn(2, 1, 200, 80)
    y = torch.tensor([[1.0, 0, 0], [0.3, 0.7, 0]])
    logits = clf(x)
    # torch's own soft-target cross-entropy with smoothing is the independent oracle
    want = F.cross_entropy(logits, y, label_smoothing=0.1)
    assert torch.allclose(loss(x, y), want, atol=1e-6)
    hard = torch.tensor([[0.0, 0, 1], [0, 1, 0]])  # one-hot targets: the class-index form agrees
    index_form = F.cross_entropy(logits, torch.tensor([2, 1]), label_smoothing=0.1)
    assert torch.allclose(loss(x, hard), index_form, atol=1e-6)


def test_evaluate_mode_finetune_and_probe_share_one_report(tones, tmp_path, capsys):
    torch.manual_seed(0)
    AudioMAE(micro_config()).save_pretrained(tmp_path / "enc")
    (tmp_path / "ft.json").write_text(
        json.dumps({"max_steps": 6, "batch_size": 8, "num_workers": 0, "lr": 2e-3})
    )
    rc = main(
        [
            "evaluate",
            "--tasks",
            str(tones),
            "--models",
            str(tmp_path / "enc"),
            "--mode",
            "finetune",
            "probe",
            "--seeds",
            "2",
            "--ft-config",
            str(tmp_path / "ft.json"),
            "--max-epochs",
            "6",
            "--quiet",
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert rc == 0
    assert "enc [finetune]" in capsys.readouterr().out
    doc = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert doc["models"] == ["enc [finetune]", "enc [probe]"]
    row = doc["results"]["enc [finetune]"]["tones"]
    assert row["seeds"] == [0, 1] and row["primary_metric"] == "top1_acc"
    for seed, score in zip(
        row["seeds"], row["seed_scores"], strict=True
    ):  # each seed is one finetune run
        run = tmp_path / "eval" / "finetune_runs" / "enc_finetune_" / "tones" / f"seed{seed}"
        assert json.loads((run / "test.json").read_text())["test"]["top1_acc"] == pytest.approx(
            score
        )
    assert (tmp_path / "eval" / "results.md").is_file()


def test_torchrun_two_ranks_match_one_process(tones, tmp_path):
    """DDP through the real launcher: 2 ranks x 4 reproduce 1 process x (2 micro-steps of 4)."""
    from audiomaepp.training import read_metrics

    from .conftest import local_torchrun, start, wait

    ref = finetune(quick(tones, tmp_path / "one", max_steps=6, per_device_batch=4, log_every=1))
    assert ref.finished
    flags = [
        "finetune",
        "--model",
        "random:tiny",
        "--task",
        str(tones),
        "--out",
        str(tmp_path / "two"),
        "--max-steps",
        "6",
        "--batch-size",
        "8",
        "--per-device-batch",
        "4",
        "--lr",
        "2e-3",
        "--warmup-epochs",
        "1",
        "--epochs",
        "8",
        "--num-workers",
        "0",
        "--log-every",
        "1",
        "--no-progress",
        *[x for k, v in MICRO.items() for x in ("--model-set", f"{k}={v}")],
    ]
    cmd = local_torchrun("-m", "audiomaepp.cli.main", *flags)
    log = tmp_path / "log.txt"
    assert wait(start(cmd, log, OMP_NUM_THREADS="1"), log, 240) == 0, log.read_text()[-4000:]

    def losses(run: Path) -> list[float]:
        return [r["loss"] for r in read_metrics(run) if "loss" in r]

    assert '"world_size": 2' in (tmp_path / "two" / "plan.json").read_text()
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    a = AudioClassifier.from_pretrained(tmp_path / "one" / "model").head
    b = AudioClassifier.from_pretrained(tmp_path / "two" / "model").head
    for layer in ("fc1", "fc2"):  # not BatchNorm's running statistics: DDP keeps rank 0's
        assert torch.allclose(getattr(a, layer).weight, getattr(b, layer).weight, atol=1e-4)


_LAGGING_RANK_SCRIPT = r"""
import os, sys
from audiomaepp.finetune import FinetuneConfig, finetune
from audiomaepp.finetune.trainer import FinetuneTrainer
from audiomaepp.training import checkpoint as ckpt

rank = int(os.environ["RANK"])
if rank == 0:
    # rank 0's node lags behind the shared run folder: it does not see step 4 yet (rank 1 does)
    seen = ckpt.list_checkpoints
    ckpt.list_checkpoints = lambda run_dir: [p for p in seen(run_dir) if p.name <= "step_00000002"]
real_resume = FinetuneTrainer.resume
def resume(self, path):
    real_resume(self, path)
    print(f"RANK {rank} RESUMED {self.step}", flush=True)
FinetuneTrainer.resume = resume
result = finetune(FinetuneConfig.from_json(sys.argv[1]))
print(f"RANK {rank} DONE {result.finished} {result.folds[0].best_step}", flush=True)
"""


def test_torchrun_ranks_resume_from_the_checkpoint_rank0_chose(tones, tmp_path):
    """Rank 1 sees a newer checkpoint (step 4) than rank 0 (step 2), as when a shared file system
    lags on one node. Both must resume from rank 0's choice and finish together (before, each
    rank resolved ``--resume auto`` itself: rank 1 jumped to step 4 and the replicas diverged)."""
    from audiomaepp.training import list_checkpoints, read_metrics

    from .conftest import local_torchrun, start, wait

    run = tmp_path / "run"
    cfg = quick(tones, run, max_steps=6, save_every=2, keep_last=0, log_every=1, stop_after=4)
    assert not finetune(cfg).finished  # one process writes step 2 and step 4
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000004"]
    resumed = cfg.replace(stop_after=None, resume="auto", per_device_batch=4, dist_timeout_s=60)
    (tmp_path / "cfg.json").write_text(resumed.to_json())
    (tmp_path / "rank.py").write_text(_LAGGING_RANK_SCRIPT)
    cmd = local_torchrun(str(tmp_path / "rank.py"), str(tmp_path / "cfg.json"))
    log = tmp_path / "log.txt"
    rc = wait(start(cmd, log, OMP_NUM_THREADS="1"), log, 240)
    text = log.read_text()
    for rank in (0, 1):
        assert f"RANK {rank} RESUMED 2" in text, text[-4000:]  # rank 0's checkpoint, on both
    for rank in (0, 1):
        assert f"RANK {rank} DONE True" in text, text[-4000:]
    assert rc == 0, text[-4000:]
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 3-4 redone from rank 0's checkpoint, once each
    assert (run / "test.json").is_file()


def test_sigterm_checkpoints_and_the_cli_resumes(tones, tmp_path):
    import signal
    import time

    from audiomaepp.training import list_checkpoints, read_metrics

    from .conftest import start, wait

    run = tmp_path / "run"
    flags = [
        "finetune",
        "--model",
        "random:tiny",
        "--task",
        str(tones),
        "--out",
        str(run),
        "--max-steps",
        "100000",
        "--batch-size",
        "8",
        "--num-workers",
        "0",
        "--log-every",
        "1",
        "--save-every",
        "100000",
        "--no-progress",
        *[x for k, v in MICRO.items() for x in ("--model-set", f"{k}={v}")],
    ]
    log = tmp_path / "log.txt"
    proc = start([sys.executable, "-m", "audiomaepp.cli.main", *flags], log, OMP_NUM_THREADS="1")
    deadline = time.monotonic() + 120
    while len([r for r in read_metrics(run) if "loss" in r]) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert wait(proc, log, 120) == 0, log.read_text()[-3000:]
    assert "SIGTERM received" in log.read_text()
    (ckpt,) = list_checkpoints(run)
    stopped = json.loads((ckpt / "state.json").read_text())["step"]
    assert stopped >= 3
    assert main([*flags, "--resume", "auto", "--stop-after", str(stopped + 2)]) == 0
    assert max(r["step"] for r in read_metrics(run) if "loss" in r) == stopped + 2


def test_loader_workers_and_resume_position_do_not_change_the_stream(tones):
    from audiomaepp.data import make_loader

    split = load_task(tones).splits["train"]

    def stream(workers: int, start: int = 0) -> torch.Tensor:
        ds = LabelledCropDataset(split, 24, seed=5, rank_batch=4)
        loader = make_loader(ds, 4, num_workers=workers, pin_memory=False, persistent_workers=False)
        ds.set_epoch(2, start)
        return torch.cat([b["x"].flatten(1) for b in loader])

    one = stream(0)
    assert one.shape[0] == 24
    assert torch.equal(stream(2), one)
    assert torch.equal(stream(2, start=8), one[8:])


def _signal_at_first_loss(proc, run: Path, log: Path, signum: int) -> int:
    """Send ``signum`` once ``run`` has logged a loss line; the step checkpointed by the stop."""
    import time

    from audiomaepp.training import list_checkpoints, read_metrics

    from .conftest import wait

    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() or not any("loss" in r for r in read_metrics(run)):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signum)
    assert wait(proc, log, 120) == 0, log.read_text()[-3000:]
    (ckpt,) = list_checkpoints(run)
    return json.loads((ckpt / "state.json").read_text())["step"]


def _first_step_after(run: Path) -> int:
    """The first loss line logged by the last call that trained ``run`` (``result.json``)."""
    history = json.loads((run / "result.json").read_text())["history"]
    return next(r["step"] for r in history if "loss" in r)


def test_sigterm_ends_the_whole_kfold_job_and_resume_continues_it(tmp_path):
    """Today a stop checkpoints fold00 and starts fold01; it must end the job there instead."""
    import signal

    from .conftest import start

    task = write_task(tmp_path / "kf", {f"fold0{i}": 6 for i in range(3)}, mode="new_split_kfold")
    run = tmp_path / "run"
    flags = ["finetune", "--model", "random:tiny", "--task", str(task), "--out", str(run)]
    flags += ["--max-steps", "150", "--batch-size", "4", "--eval-every", "150"]
    flags += ["--num-workers", "0", "--log-every", "1", "--no-progress"]
    flags += [x for k, v in MICRO.items() for x in ("--model-set", f"{k}={v}")]
    log = tmp_path / "log.txt"
    proc = start([sys.executable, "-m", "audiomaepp.cli.main", *flags], log, OMP_NUM_THREADS="1")
    fold0 = run / "folds" / "fold00"
    stopped = _signal_at_first_loss(proc, fold0, log, signal.SIGTERM)
    assert 1 <= stopped < 150
    assert not (run / "folds" / "fold01").exists(), "the next fold was started after the stop"
    assert not (run / "report.json").exists()
    assert main([*flags, "--resume", "auto"]) == 0
    assert _first_step_after(fold0) == stopped + 1  # continued, not restarted
    report = json.loads((run / "report.json").read_text())
    assert len(report["folds"]) == 3


def test_sigint_ends_evaluate_mode_finetune_before_the_next_seed(tones, tmp_path):
    import signal

    from .conftest import start

    torch.manual_seed(0)
    AudioMAE(micro_config()).save_pretrained(tmp_path / "enc")
    ft = {"max_steps": 150, "eval_every": 150, "batch_size": 4, "num_workers": 0, "log_every": 1}
    (tmp_path / "ft.json").write_text(json.dumps(ft))
    out = tmp_path / "eval"
    flags = ["evaluate", "--tasks", str(tones), "--models", str(tmp_path / "enc"), "--out"]
    flags += [str(out), "--mode", "finetune", "--seeds", "2", "--ft-config"]
    flags += [str(tmp_path / "ft.json"), "--quiet"]
    log = tmp_path / "log.txt"
    proc = start([sys.executable, "-m", "audiomaepp.cli.main", *flags], log, OMP_NUM_THREADS="1")
    seeds = out / "finetune_runs" / "enc" / "tones"
    stopped = _signal_at_first_loss(proc, seeds / "seed0", log, signal.SIGINT)
    assert 1 <= stopped < 150
    assert not (seeds / "seed1").exists(), "the next seed was started after the stop"
    assert main(flags) == 0  # evaluate resumes its fine-tunes by default
    assert _first_step_after(seeds / "seed0") == stopped + 1
    assert (seeds / "seed1" / "test.json").is_file()
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["results"]["enc"]["tones"]["runs"]) == 2, doc["results"]
