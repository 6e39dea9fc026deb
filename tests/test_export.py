"""ONNX export (waveform in, embeddings out, run by onnxruntime) and the Hugging Face Hub round
trip through a local cache in offline mode (no network)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort  # the [test] extra installs it
import pytest
import torch

from audiomaepp.embedding import Embedder


@pytest.mark.parametrize("layout", ["release", "time_major"])
def test_onnx_export_matches_pytorch(converted_dir, tmp_path, layout):
    """Dynamic batch and length: clips of other lengths than the export example, the release's
    whole-chunk padding case (exactly 2 s of frames) and a clip shorter than one step."""
    from audiomaepp.cli.main import main

    out = tmp_path / f"{layout}.onnx"
    assert main(["export-onnx", str(converted_dir), str(out), "--layout", layout]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["scene", "embeddings", "timestamps"]
    embedder = Embedder.from_dir(converted_dir, device="cpu", dtype="float32", layout=layout)
    gen = torch.Generator().manual_seed(1)
    for batch, samples in ((1, 31840), (3, 116800), (2, 401), (1, 32000 * 3 + 7)):
        wav = torch.randn(batch, samples, generator=gen) * 0.1
        scene, emb, stamps = session.run(None, {"waveform": wav.numpy()})
        ref_emb, ref_stamps = embedder.timestamp_embeddings(wav)
        assert emb.shape == tuple(ref_emb.shape), (batch, samples)
        np.testing.assert_allclose(emb, ref_emb.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(scene, embedder.scene_embeddings(wav).numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(stamps, ref_stamps.numpy(), rtol=0, atol=1e-2)


def test_exported_step_counts_follow_the_chunk_plans():
    """The graph's integer step count (symbolic in the length) equals plan_chunks for every
    length."""
    from audiomaepp.embedding import plan_chunks
    from audiomaepp.export.onnx import MIN_SAMPLES, WaveformEmbedder
    from audiomaepp.frontend import num_frames

    from .conftest import micro_config

    for layout in ("release", "time_major"):
        from audiomaepp import AudioMAE

        graph = WaveformEmbedder(Embedder(AudioMAE(micro_config()), layout=layout))
        for n in list(range(MIN_SAMPLES, 70000, 37)) + [31840, 32000, 64000, 64160]:
            keep, stamps = graph._kept_steps(n, num_frames(n))
            plan = plan_chunks(n, num_frames(n), layout)
            assert keep == plan.num_steps, (layout, n)
            torch.testing.assert_close(stamps, plan.timestamps(), rtol=0, atol=1e-3)


# ---- Hugging Face Hub ----------------------------------------------------------------------------
def _cache_repo(cache: Path, repo_id: str, folder: Path, number: int = 0) -> str:
    """Put ``folder`` in a local Hub cache as huggingface_hub lays out a downloaded snapshot."""
    commit = f"{number:040d}"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def _offline_python(code: str, cache: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh process with only the local cache and HF_HUB_OFFLINE=1."""
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf_home")
    )
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )


def _fake_hub(monkeypatch, cache: Path) -> list[dict]:
    """``HfApi`` uploads land in a local Hub cache laid out as huggingface_hub writes it."""
    import huggingface_hub

    calls: list[dict] = []

    def create_repo(self, repo_id, **kw):
        calls.append({"create": repo_id, **kw})

    def upload_folder(self, *, repo_id, folder_path, **kw):
        commit = _cache_repo(cache, repo_id, Path(folder_path), len(calls))
        calls.append({"upload": repo_id, "files": sorted(os.listdir(folder_path)), **kw})
        return f"https://huggingface.co/{repo_id}/commit/{commit}"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


LOAD_OFFLINE = """
import json, sys, torch
from audiomaepp import AudioMAE, hear
model = AudioMAE.from_pretrained("someone/audiomaepp-micro")
x = torch.linspace(-1, 1, 200 * 80).reshape(1, 1, 200, 80)
emb = hear.load_model("someone/audiomaepp-micro", device="cpu", dtype="float32",
                      layout="time_major")
wav = torch.sin(torch.arange(16000 * 2) * 0.01)[None] * 0.1
print(json.dumps({"tokens": model.encode(x)[0, :3, :4].tolist(),
                  "scene": hear.get_scene_embeddings(wav, emb)[0, :6].tolist()}))
try:
    AudioMAE.from_pretrained("someone/not-in-the-cache")
except Exception as exc:
    print(type(exc).__name__, str(exc)[:300])
"""


def test_push_to_hub_then_load_by_repo_id_offline(tmp_path, monkeypatch):
    from audiomaepp import AudioMAE, hear

    from .conftest import micro_config

    torch.manual_seed(0)
    model = AudioMAE(micro_config()).eval()
    cache = tmp_path / "hub"
    calls = _fake_hub(monkeypatch, cache)
    url = model.push_to_hub("someone/audiomaepp-micro")
    assert url.endswith("/commit/" + f"{1:040d}")
    assert calls[1]["files"] == ["README.md", "config.json", "model.safetensors"]
    snapshot = next((cache / "models--someone--audiomaepp-micro" / "snapshots").iterdir())
    card = (snapshot / "README.md").read_text()
    assert (
        "library_name: audiomaepp" in card and 'from_pretrained("someone/audiomaepp-micro")' in card
    )
    assert json.loads((snapshot / "config.json").read_text())["config"]["embed_dim"] == 32

    # a fresh process with only the local cache and HF_HUB_OFFLINE=1: no network is tried
    res = _offline_python(LOAD_OFFLINE, cache, tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    got = json.loads(lines[0])
    x = torch.linspace(-1, 1, 200 * 80).reshape(1, 1, 200, 80)
    with torch.no_grad():
        np.testing.assert_allclose(
            got["tokens"], model.encode(x)[0, :3, :4].numpy(), rtol=0, atol=1e-6
        )
    wav = torch.sin(torch.arange(16000 * 2) * 0.01)[None] * 0.1
    ref = hear.get_scene_embeddings(wav, Embedder(model, layout="time_major", dtype="float32"))
    np.testing.assert_allclose(got["scene"], ref[0, :6].numpy(), rtol=0, atol=1e-6)
    assert lines[1].startswith("CheckpointError") and "someone/not-in-the-cache" in lines[1]


CLASSIFIER_OFFLINE = """
import json, torch
from audiomaepp.finetune import AudioClassifier, build_classifier
clf = AudioClassifier.from_pretrained("someone/clf")
x = torch.linspace(-1, 1, 200 * 80).reshape(1, 1, 200, 80)
tuned = build_classifier("someone/enc", ["a", "b"], "multiclass", seed=3)
print(json.dumps({"labels": list(clf.labels), "logits": clf(x)[0].tolist(),
                  "encoder": tuned.encoder.patch_embed.proj.weight.flatten()[:4].tolist()}))
"""


def test_a_classifier_and_a_fine_tuning_start_load_by_repo_id_offline(tmp_path):
    """The one model-directory reader takes Hub ids for classifiers too (labels.json comes along),
    and ``finetune --model owner/name`` starts from a Hub encoder."""
    from audiomaepp import AudioMAE
    from audiomaepp.finetune import build_classifier

    from .conftest import micro_config

    torch.manual_seed(0)
    encoder = AudioMAE(micro_config()).eval()
    micro = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_num_heads=2)
    clf = build_classifier("random:tiny", ["low", "mid", "high"], "multiclass", overrides=micro)
    encoder.save_pretrained(tmp_path / "enc")
    clf.save_pretrained(tmp_path / "clf")
    cache = tmp_path / "hub"
    _cache_repo(cache, "someone/enc", tmp_path / "enc")
    _cache_repo(cache, "someone/clf", tmp_path / "clf")
    res = _offline_python(CLASSIFIER_OFFLINE, cache, tmp_path)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["labels"] == ["low", "mid", "high"]
    x = torch.linspace(-1, 1, 200 * 80).reshape(1, 1, 200, 80)
    with torch.no_grad():
        np.testing.assert_allclose(got["logits"], clf.eval()(x)[0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        got["encoder"], encoder.encoder.patch_embed.proj.weight.flatten()[:4].detach().numpy()
    )


def test_a_missing_local_folder_is_not_taken_for_a_repo_id(tmp_path):
    from audiomaepp import AudioMAE, CheckpointError

    with pytest.raises(CheckpointError, match="not a model directory"):
        AudioMAE.from_pretrained(tmp_path / "missing" / "model")
