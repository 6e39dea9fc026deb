"""Precision and backends of the embedding path: CPU detection and ``auto``, the fused oneDNN
encoder against the eager modules, bf16 / int8 error bounds, the quality gate on a small task,
ONNX Runtime as a backend, long files streamed, and the metadata that says what ran."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from audiomaepp import AudioMAE
from audiomaepp.embedding import Embedder
from audiomaepp.embedding.cpu_encoder import FusedEncoder, fused_available
from audiomaepp.embedding.precision import CpuFeatures, cpu_features, resolve_precision
from audiomaepp.embedding.stream import ArraySource, FileSource

from .conftest import micro_config

CPU = torch.device("cpu")
PRECISIONS = ("float32", "bfloat16", "int8")
ZEN5 = "fpu avx2 avx512f avx512_bf16 avx512_vnni avx_vnni"  # the flags that matter, this machine
SAPPHIRE_RAPIDS = "avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_int8 amx_tile"
CASCADE_LAKE = "avx2 avx512f avx512_vnni"  # VNNI, no bf16 units
HASWELL = "avx avx2 fma"


@pytest.mark.parametrize(
    "flags, native_bf16, vnni, auto",
    [
        (ZEN5, True, True, "bfloat16"),
        (SAPPHIRE_RAPIDS, True, True, "bfloat16"),
        ("avx2 amx_bf16", True, False, "bfloat16"),  # AMX alone is enough
        (CASCADE_LAKE, False, True, "float32"),
        (HASWELL, False, False, "float32"),
    ],
)
def test_auto_follows_the_cpus_matmul_units(flags, native_bf16, vnni, auto):
    feats = CpuFeatures.from_flags(flags.split())
    assert feats.native_bf16 is native_bf16 and feats.vnni is vnni
    assert resolve_precision("auto", CPU, feats) == auto
    assert resolve_precision("auto", torch.device("cuda"), feats) == "bfloat16"
    assert resolve_precision("int8", CPU, feats) == "int8"  # an explicit choice is kept


def test_cpu_features_come_from_cpuinfo_not_the_model_name(tmp_path):
    info = tmp_path / "cpuinfo"
    # a name that suggests bf16 units, flags that have none: the flags decide
    info.write_text(
        "processor\t: 0\nmodel name\t: Intel Xeon Platinum 8480+ (Sapphire Rapids)\n"
        f"flags\t\t: {HASWELL}\n\nprocessor\t: 1\nflags\t\t: {HASWELL}\n"
    )
    feats = cpu_features(info)
    assert feats.model.startswith("Intel Xeon") and not feats.native_bf16
    assert resolve_precision("auto", CPU, feats) == "float32"
    info.write_text(f"model name\t: AMD EPYC\nflags\t\t: {ZEN5}\n")
    assert cpu_features(info).native_bf16
    with pytest.raises(ValueError, match="int8"):
        resolve_precision("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="dtype"):
        resolve_precision("fp8", CPU)


def test_an_embedder_says_what_runs():
    emb = Embedder.random_init("tiny", device="cpu", embed_dim=32, depth=1, num_heads=2)
    assert emb.precision == resolve_precision("auto", CPU)
    assert emb.cache_key.endswith(f"-{emb.precision}")
    fp32 = Embedder.random_init(
        "tiny", device="cpu", dtype="float32", embed_dim=32, depth=1, num_heads=2
    )
    int8 = Embedder.random_init(
        "tiny", device="cpu", dtype="int8", embed_dim=32, depth=1, num_heads=2
    )
    assert {fp32.cache_key, int8.cache_key} == {
        fp32.cache_key.replace("-float32", "-int8"),
        fp32.cache_key,
    }
    assert int8.describe()["precision"] == "int8" and int8.backend == "torch"
    if fused_available():
        assert fp32.backend == "torch-fused"


@pytest.fixture(scope="module")
def encoders():
    """Micro encoders of every block kind the fused path must reproduce."""
    torch.manual_seed(0)
    kinds = {
        "plusplus": {},
        "ln3": {"swiglu_norm": "ln3"},
        "vanilla": {"block": "vanilla"},
        "rope": {"encoder_rope": "sequence"},
    }
    return {k: AudioMAE(micro_config(**kw)).encoder.eval() for k, kw in kinds.items()}


@pytest.mark.skipif(not fused_available(), reason="no oneDNN in this torch build")
@pytest.mark.parametrize("kind", ["plusplus", "ln3", "vanilla", "rope"])
def test_fused_encoder_matches_the_modules(encoders, kind):
    enc = encoders[kind]
    x = torch.randn(3, 1, 200, 80)
    with torch.no_grad():
        ref = enc(x)
        fp32 = FusedEncoder(enc, torch.float32, 3)(x)
        bf16 = FusedEncoder(enc, torch.bfloat16, 3)(x)
    rel = lambda out: float((out - ref).norm() / ref.norm())  # noqa: E731
    assert fp32.dtype == torch.float32 and fp32.shape == ref.shape
    assert rel(fp32) < 1e-5  # the same arithmetic, fused
    assert 1e-4 < rel(bf16) < 3e-2  # really bf16, and close


def test_reduced_precision_scene_embeddings_stay_close():
    """The relative error of each reduced precision against fp32 on speech-like noise."""
    torch.manual_seed(1)
    audio = torch.randn(3, 16000 * 5) * 0.1
    fp32 = Embedder.random_init(
        "tiny", device="cpu", dtype="float32", embed_dim=64, depth=2, num_heads=2
    )
    ref = fp32.scene_embeddings(audio)
    for dtype, bound in (("bfloat16", 2e-2), ("int8", 6e-2)):
        emb = Embedder.random_init(
            "tiny", device="cpu", dtype=dtype, embed_dim=64, depth=2, num_heads=2
        )
        err = float((emb.scene_embeddings(audio) - ref).norm() / ref.norm())
        assert 0 < err < bound, (dtype, err)


def test_quality_gate_on_a_small_task(tmp_path):
    """Probe scores with the bf16 and int8 encoders lie inside the fp32 run's 95 % CI (5 seeds)
    on a small synthetic task: the CI form of ``benchmarks/bench_precision.py``."""
    from audiomaepp.evaluation import run_evaluation

    from .test_evaluation import make_task

    task = make_task(
        tmp_path, "tones", "multiclass", "trainvaltest", {"train": 45, "valid": 15, "test": 30}
    )
    kw = dict(embed_dim=64, depth=2, num_heads=2)
    embs = [Embedder.random_init("tiny", device="cpu", dtype=d, **kw) for d in PRECISIONS]
    for e in embs:
        e.name = f"tiny-{e.precision}"
    result = run_evaluation(embs, [task], seeds=5, progress=False, max_epochs=100, patience=10)
    scores = {m: result.results[m]["tones"] for m in result.models}
    ref = scores["tiny-float32"]
    assert ref.mean > 0.5  # the task is learnt at all (3 classes)
    for name in ("tiny-bfloat16", "tiny-int8"):
        assert abs(scores[name].mean - ref.mean) <= ref.ci + 1e-9, (name, scores[name].summary())


@pytest.mark.filterwarnings("ignore")
def test_onnxruntime_backend_matches_torch():
    pytest.importorskip("onnxruntime")
    from audiomaepp.export.onnx import use_onnxruntime

    kw = dict(embed_dim=32, depth=1, num_heads=2)
    ref = Embedder.random_init("tiny", device="cpu", dtype="float32", batch_size=4, **kw)
    ort = Embedder.random_init("tiny", device="cpu", dtype="float32", batch_size=4, **kw)
    use_onnxruntime(ort, "float32")
    clips = [
        np.random.default_rng(i).standard_normal(n).astype(np.float32) * 0.1
        for i, n in enumerate((16000, 70000, 200000))
    ]  # the last one is streamed (13 chunks > 4)
    np.testing.assert_allclose(ort.embed(clips), ref.embed(clips), rtol=0, atol=1e-4)
    assert ort.backend == "onnxruntime" and ort.cache_key.endswith("-float32-onnxruntime")


def test_a_long_file_streams_to_the_same_embedding(tmp_path):
    """A 44.1 kHz stereo file decoded block by block (resampled on the fly) and streamed in two
    passes equals the whole file decoded and embedded at once."""
    from audiomaepp.audio import load_audio
    from audiomaepp.embedding import embed_files
    from audiomaepp.embedding import files as files_module

    rng = np.random.default_rng(0)
    path = tmp_path / "long.flac"
    sf.write(path, (rng.standard_normal((44100 * 23, 2)) * 0.1).astype(np.float32), 44100)
    whole = load_audio(path)
    np.testing.assert_array_equal(np.concatenate(list(FileSource(path).blocks())), whole)
    emb = Embedder.random_init(
        "tiny", device="cpu", dtype="float32", batch_size=3, embed_dim=32, num_heads=2
    )
    ref = emb.embed([whole])[0]
    streamed = dict(emb.iter_embeddings([FileSource(path)]))[0].numpy()
    np.testing.assert_allclose(streamed, ref, rtol=0, atol=1e-5)
    # embed_files hands long files back from the workers as sources, never as samples
    old = files_module.LONG_FILE_SECONDS
    files_module.LONG_FILE_SECONDS = 10.0
    try:
        assert isinstance(files_module.decode_file(path), FileSource)
        (item,) = list(embed_files(emb, [path], workers=0))
    finally:
        files_module.LONG_FILE_SECONDS = old
    assert item.num_samples == len(whole)
    np.testing.assert_allclose(item.embedding, ref, rtol=0, atol=1e-5)


def test_a_bad_long_file_fails_alone(tmp_path):
    from audiomaepp.embedding import embed_files
    from audiomaepp.embedding import files as files_module

    good = tmp_path / "good.wav"
    bad = tmp_path / "bad.wav"
    sf.write(good, np.zeros(16000 * 30, np.float32) + 0.01, 16000)
    samples = np.random.default_rng(0).standard_normal(16000 * 30).astype(np.float32) * 0.1
    samples[16000 * 25] = np.nan  # found only when the stream gets there
    sf.write(bad, samples, 16000, subtype="FLOAT")
    emb = Embedder.random_init(
        "tiny", device="cpu", dtype="float32", batch_size=4, embed_dim=32, num_heads=2
    )
    old = files_module.LONG_FILE_SECONDS
    files_module.LONG_FILE_SECONDS = 10.0
    try:
        items = list(embed_files(emb, [bad, good], workers=0))
    finally:
        files_module.LONG_FILE_SECONDS = old
    assert items[0].embedding is None and "NaN" in items[0].error and "bad.wav" in items[0].error
    assert items[1].embedding is not None and np.isfinite(items[1].embedding).all()


def test_predict_streams_long_clips_to_the_same_scores():
    from audiomaepp.finetune import AudioClassifier

    torch.manual_seed(0)
    clf = AudioClassifier.from_encoder(AudioMAE(micro_config()), ["a", "b", "c"], "multiclass")
    wave = np.random.default_rng(0).standard_normal(16000 * 25 + 1234).astype(np.float32) * 0.1
    whole = clf.predict(wave, 16000, dtype="float32", batch_size=64)  # one batch: not streamed
    streamed = clf.predict(wave, 16000, dtype="float32", batch_size=4)  # 13 windows: streamed
    assert len(streamed.segment_starts) == len(whole.segment_starts) == 13
    np.testing.assert_allclose(streamed.segment_scores, whole.segment_scores, atol=1e-5)
    streamed_src = clf.predict_stream(ArraySource(wave), dtype="float32", batch_size=5)
    np.testing.assert_allclose(streamed_src.segment_scores, whole.segment_scores, atol=1e-5)
    bf16 = clf.predict(wave, 16000, dtype="bfloat16")
    assert bf16.labels == whole.labels or max(whole.scores.values()) < 0.5


def test_embed_cli_records_precision_and_backend(tmp_path):
    from audiomaepp.cli.main import main

    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    AudioMAE(micro_config()).save_pretrained(model_dir)
    src = tmp_path / "a.wav"
    sf.write(src, np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32), 16000)
    for dtype in ("int8", "auto"):
        out = tmp_path / f"out-{dtype}"
        args = ["embed", str(model_dir), str(src), "--out", str(out), "--device", "cpu"]
        assert main([*args, "--workers", "0", "--timestamps", "--dtype", dtype]) == 0
        meta = json.loads((out / "embedder.json").read_text())
        want = "int8" if dtype == "int8" else resolve_precision("auto", CPU)
        assert meta["precision"] == want and meta["backend"].startswith("torch") and meta["cpu"]
        npz = np.load(out / "timestamps" / "00000000.npz")
        assert str(npz["precision"]) == want


@pytest.mark.parametrize("pooling", ["bands", "mean", "cls"])
def test_predict_in_float32_pools_as_the_trained_classifier(pooling):
    """The inference encoder (``dtype`` given) and the modules (``dtype=None``, as validation
    runs) give the same window scores for every pooling and the MLP head."""
    from audiomaepp.finetune import AudioClassifier

    torch.manual_seed(0)
    clf = AudioClassifier.from_encoder(
        AudioMAE(micro_config()), ["a", "b", "c"], "multiclass", pooling=pooling, head="mlp"
    )
    windows = [torch.randn(3, 1, 200, 80), torch.randn(2, 1, 200, 80)]
    modules = clf.window_scores(windows, batch_size=4, dtype=None)
    inference = clf.window_scores(windows, batch_size=4, dtype="float32")
    for a, b in zip(modules, inference, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5)
