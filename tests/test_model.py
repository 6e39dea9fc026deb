"""Model: parameter counts (spec §4), shapes, masking, RoPE variants, persistence, errors."""

from __future__ import annotations

import json

import pytest
import torch

from audiomaepp import AudioMAE, AudioMAEConfig, CheckpointError
from audiomaepp.model import patchify, random_masking, unpatchify
from audiomaepp.model.layers import apply_rope, rope_tables

from .conftest import micro_config

# (preset, block) -> (encoder + patch embed, whole MAE), in millions, from the spec's table.
SPEC_COUNTS = {
    ("tiny", "plusplus"): (8.97, 21.00),
    ("base", "plusplus"): (142.05, 154.30),
    ("large", "plusplus"): (504.25, 525.96),
    ("tiny", "vanilla"): (None, 12.69),
    ("base", "vanilla"): (None, 92.81),
    ("large", "vanilla"): (None, 315.93),
}


@pytest.mark.parametrize("preset, block", sorted(SPEC_COUNTS))
def test_parameter_counts_match_spec(preset, block):
    with torch.device("meta"):
        model = AudioMAE(AudioMAEConfig.preset(preset, block=block))
    enc, whole = SPEC_COUNTS[(preset, block)]
    assert round(model.num_params() / 1e6, 2) == whole
    if enc is not None:
        assert round(model.num_params(encoder_only=True) / 1e6, 2) == enc


def test_flops_per_sample_matches_issue_figures():
    expected = {"tiny": 21.8, "base": 62.7, "large": 188.0}
    for name, gflops in expected.items():
        with torch.device("meta"):
            model = AudioMAE(AudioMAEConfig.preset(name))
        assert abs(model.flops_per_sample() / 1e9 - gflops) / gflops < 0.01


def test_presets_and_overrides():
    cfg = AudioMAEConfig.preset("base", block="vanilla")
    assert (cfg.depth, cfg.num_heads, cfg.embed_dim, cfg.decoder_embed_dim) == (12, 12, 768, 384)
    assert cfg.block == cfg.decoder_block == "vanilla"
    assert AudioMAEConfig.preset("large").decoder_embed_dim == 512
    assert cfg.num_keep == 50 and cfg.num_patches == 250
    with pytest.raises(ValueError, match="unknown preset"):
        AudioMAEConfig.preset("gigantic")
    with pytest.raises(ValueError, match="unknown AudioMAEConfig field"):
        AudioMAEConfig.preset("tiny", nonsense=1)
    with pytest.raises(ValueError, match="encoder_rope"):
        AudioMAEConfig.preset("tiny", encoder_rope="spiral")
    with pytest.raises(ValueError, match="divisible"):
        AudioMAEConfig.preset("tiny", num_heads=5)


def test_forward_shapes_and_loss_definition():
    torch.manual_seed(0)
    model = AudioMAE(micro_config()).eval()
    x = torch.randn(3, 1, 200, 80)
    noise = torch.rand(3, 250)
    out = model(x, noise)
    assert out.pred.shape == (3, 250, 64) and out.mask.shape == (3, 250)
    assert out.latent.shape == (3, 51, 32) and out.loss.ndim == 0
    assert (out.mask.sum(1) == 200).all()
    # removed patches are exactly the 200 with the largest noise
    expect = torch.zeros(3, 250)
    expect.scatter_(1, noise.argsort(1)[:, 50:], 1.0)
    torch.testing.assert_close(out.mask, expect)
    target = patchify(x, (4, 16))
    per_patch = ((out.pred - target) ** 2).mean(-1)
    torch.testing.assert_close(out.loss, (per_patch * out.mask).sum() / out.mask.sum())
    assert model.encode(x).shape == (3, 250, 32)


def test_patchify_order_is_time_major_and_invertible():
    x = torch.arange(200 * 80, dtype=torch.float32).reshape(1, 1, 200, 80)
    p = patchify(x, (4, 16))
    assert p.shape == (1, 250, 64)
    # patch index t*5+f holds rows 4t..4t+3, columns 16f..16f+15, flattened time then frequency
    t, f = 7, 3
    torch.testing.assert_close(
        p[0, t * 5 + f], x[0, 0, 4 * t : 4 * t + 4, 16 * f : 16 * f + 16].reshape(-1)
    )
    torch.testing.assert_close(unpatchify(p, (50, 5), (4, 16)), x)


def test_random_masking_noise_shape_checked():
    with pytest.raises(ValueError, match="noise must have shape"):
        random_masking(torch.zeros(2, 250, 8), 50, torch.rand(2, 249))


def test_wrong_input_shape_is_a_clear_error():
    model = AudioMAE(micro_config())
    with pytest.raises(ValueError, match=r"\(B, 1, 200, 80\)"):
        model(torch.zeros(2, 1, 80, 200))
    with pytest.raises(ValueError, match="standardised log-mel"):
        model.encode(torch.zeros(2, 200, 80))


def test_rope_rotates_interleaved_pairs():
    x = torch.randn(1, 1, 4, 8)
    cos, sin = rope_tables(torch.arange(4), 8)
    out = apply_rope(x, cos, sin)
    p, i = 3, 2  # position 3, pair (4, 5)
    a = p * 10000 ** (-2 * i / 8)
    x0, x1 = x[0, 0, p, 2 * i], x[0, 0, p, 2 * i + 1]
    expect = torch.tensor(
        [
            x0 * torch.cos(torch.tensor(a)) - x1 * torch.sin(torch.tensor(a)),
            x1 * torch.cos(torch.tensor(a)) + x0 * torch.sin(torch.tensor(a)),
        ]
    )
    torch.testing.assert_close(out[0, 0, p, 2 * i : 2 * i + 2], expect)
    torch.testing.assert_close(out[0, 0, 0], x[0, 0, 0])  # position 0 is not rotated


def test_rope_sequence_vs_grid():
    """Grid RoPE uses true positions: it differs from the release's only for masked encoding."""
    torch.manual_seed(0)
    seq = AudioMAE(micro_config(encoder_rope="sequence", decoder_rope="sequence")).eval()
    grid = AudioMAE(micro_config(encoder_rope="grid", decoder_rope="grid")).eval()
    grid.load_state_dict(seq.state_dict())
    x, noise = torch.randn(2, 1, 200, 80), torch.rand(2, 250)
    with torch.no_grad():
        torch.testing.assert_close(seq.encode(x), grid.encode(x))
        assert not torch.allclose(seq(x, noise).latent, grid(x, noise).latent, atol=1e-4)
    none = AudioMAE(micro_config()).eval()
    none.load_state_dict(seq.state_dict())
    with torch.no_grad():
        assert not torch.allclose(none.encode(x), seq.encode(x), atol=1e-4)


def test_ln3_variant_uses_norm3_and_ln2_freezes_it():
    torch.manual_seed(0)
    ln2 = AudioMAE(micro_config())
    ln3 = AudioMAE(micro_config(swiglu_norm="ln3"))
    ln3.load_state_dict(ln2.state_dict())
    assert not ln2.encoder.blocks[0].norm3.weight.requires_grad
    assert ln3.encoder.blocks[0].norm3.weight.requires_grad
    with torch.no_grad():
        for m in (ln2, ln3):
            m.encoder.blocks[0].norm3.weight.mul_(3.0)
    x = torch.randn(1, 1, 200, 80)
    with torch.no_grad():
        ref = AudioMAE(micro_config())
        ref.load_state_dict(ln2.state_dict())
        torch.testing.assert_close(ln2.encode(x), ref.encode(x))  # LN3 unused in the release wiring
        assert not torch.allclose(ln2.encode(x), ln3.encode(x), atol=1e-4)


def test_vanilla_blocks_have_no_macaron_parts():
    model = AudioMAE(micro_config(block="vanilla"))
    names = {n for n, _ in model.named_parameters()}
    assert "encoder.blocks.0.mlp.fc1.weight" in names
    assert not any("ffn1" in n or "norm3" in n for n in names)


def test_save_and_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = AudioMAE(micro_config(block="vanilla", encoder_rope="grid")).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = AudioMAE.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    x, noise = torch.randn(2, 1, 200, 80), torch.rand(2, 250)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, noise).pred, model(x, noise).pred, rtol=0, atol=0)


def test_loading_a_mismatched_directory_names_the_keys(tmp_path):
    AudioMAE(micro_config()).save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["config"]["depth"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"missing key\(s\): encoder\.blocks\.2\."):
        AudioMAE.from_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="no config.json"):
        AudioMAE.from_pretrained(tmp_path)


# ---- model specs: the one parser of what a user may name as a model ------------------------------
def test_model_specs_parse_in_one_order(tmp_path, monkeypatch):
    from audiomaepp.errors import ModelSpecError
    from audiomaepp.model.spec import ModelSpec, parse_model_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "base" / "model").mkdir(parents=True)
    (tmp_path / "logmel").mkdir()  # a folder named like a baseline: the baseline wins
    assert parse_model_spec("random:tiny") == ModelSpec("random", "tiny")
    assert parse_model_spec("runs/base/model") == ModelSpec("folder", "runs/base/model")
    assert parse_model_spec(tmp_path / "runs") == ModelSpec("folder", str(tmp_path / "runs"))
    assert parse_model_spec("someone/audiomaepp-base") == ModelSpec(
        "hub", "someone/audiomaepp-base"
    )
    assert parse_model_spec("logmel", baselines={"logmel"}) == ModelSpec("baseline", "logmel")
    assert parse_model_spec("logmel") == ModelSpec("folder", "logmel")
    for bad, message in [
        ("random:", "random:<preset>"),
        ("random:enormous", "unknown preset 'enormous'; choose from tiny, "),
        ("runs/missing/model", "not a model directory"),  # three parts: no repo id either
        ("/abs/owner", "not a Hub repo id"),
        ("plain", "not 'random:<preset>'"),
    ]:
        with pytest.raises(ModelSpecError, match=message):
            parse_model_spec(bad)
    with pytest.raises(CheckpointError, match="not 'logmel', not 'random"):  # a CheckpointError
        parse_model_spec("nothing", baselines=["logmel"])


def test_model_spec_names_are_the_report_rows(tmp_path):
    from audiomaepp.model.spec import ModelSpec, parse_model_spec

    (tmp_path / "run7" / "model").mkdir(parents=True)
    (tmp_path / "converted").mkdir()
    assert parse_model_spec(tmp_path / "run7" / "model").name == "run7"  # a run's export
    assert parse_model_spec(tmp_path / "run7").name == "run7"
    assert parse_model_spec(tmp_path / "converted").name == "converted"
    assert parse_model_spec(str(tmp_path / "converted") + "/").name == "converted"
    assert parse_model_spec("someone/audiomaepp-base").name == "audiomaepp-base"
    assert parse_model_spec("random:small").name == "random-small"
    assert ModelSpec("baseline", "logmel").name == "logmel"
    assert str(parse_model_spec("random:small")) == "random:small"


def test_embedder_rows_follow_the_spec_names(tmp_path):
    from audiomaepp.embedding import Embedder
    from audiomaepp.evaluation import make_embedder

    AudioMAE(micro_config()).save_pretrained(tmp_path / "run3" / "model")
    AudioMAE(micro_config()).save_pretrained(tmp_path / "converted")
    assert Embedder.from_dir(tmp_path / "run3" / "model", device="cpu").name == "run3"
    assert make_embedder(str(tmp_path / "converted"), device="cpu").name == "converted"
    micro = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_num_heads=2)
    assert Embedder.random_init("tiny", device="cpu", **micro).name == "random-tiny"
    assert make_embedder("logmel").name == "logmel"
