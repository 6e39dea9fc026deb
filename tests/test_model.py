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


@pytest.mark.parametrize("block", ["plusplus", "vanilla"])
def test_flop_counts_match_torchs_flop_counter(block):
    """torch's FlopCounterMode counts the linear and conv FLOPs of a real forward pass; SDPA's
    two N x N x D products (2 * 2 * N^2 * D per block) it does not see on CPU, so they are added."""
    from torch.utils.flop_counter import FlopCounterMode

    from audiomaepp.model.mae import encoder_flops

    cfg = micro_config(block=block, embed_dim=64, depth=2, decoder_depth=1)
    model = AudioMAE(cfg).eval()
    x = torch.randn(1, 1, 200, 80)

    def attention(depth: int, tokens: int, dim: int) -> int:
        return depth * 2 * 2 * tokens**2 * dim

    with FlopCounterMode(display=False) as counted, torch.no_grad():
        model.encoder(x)
    assert counted.get_total_flops() + attention(2, 251, 64) == encoder_flops(cfg)
    assert model.encoder_flops_per_chunk() == encoder_flops(cfg)
    with FlopCounterMode(display=False) as counted, torch.no_grad():
        model(x, torch.rand(1, 250))  # masked: the encoder sees cls + 50 patches
    cores = attention(2, 51, 64) + attention(1, 251, cfg.decoder_embed_dim)
    assert counted.get_total_flops() + cores == model.flops_per_sample() / 3


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


def test_forward_shapes_and_the_mask_removes_the_largest_noise():
    torch.manual_seed(0)
    model = AudioMAE(micro_config()).eval()
    x = torch.randn(3, 1, 200, 80)
    noise = torch.stack([torch.randperm(250) for _ in range(3)]).float()  # each row: 0..249
    out = model(x, noise)
    assert out.pred.shape == (3, 250, 64) and out.mask.shape == (3, 250)
    assert out.latent.shape == (3, 51, 32) and out.loss.ndim == 0
    # the 50 patches with noise 0..49 are kept, the 200 others removed (spec: 80 % masking)
    torch.testing.assert_close(out.mask, (noise >= 50).float())
    assert model.encode(x).shape == (3, 250, 32)


def _zero_prediction(model: AudioMAE) -> AudioMAE:
    with torch.no_grad():
        model.decoder.pred.weight.zero_()
        model.decoder.pred.bias.zero_()
    return model


def test_loss_is_the_squared_error_of_the_removed_patches_only():
    # Hand-made case: the decoder predicts 0, every pixel of patch i (time-major, i = t * 5 + f) is
    # i / 100, and the noise is the patch index, so patches 0..49 are kept and 50..249 removed:
    # loss = mean_{i=50..249} (i / 100)^2 = (sum_{i<250} i^2 - sum_{i<50} i^2) / 200 / 10^4
    #      = (5_177_125 - 40_425) / 200 / 10^4 = 2.56835
    model = _zero_prediction(AudioMAE(micro_config()))
    grid = (torch.arange(250.0) / 100).reshape(50, 5)  # (time patch, frequency patch)
    x = grid.repeat_interleave(4, 0).repeat_interleave(16, 1)[None, None]  # (1, 1, 200, 80)
    out = model(x, torch.arange(250.0)[None])
    torch.testing.assert_close(out.loss, torch.tensor(2.56835))


def test_norm_pix_loss_standardises_each_target_patch():
    # A checkerboard of +-3: every patch has mean 0 and unbiased variance 9 * 64 / 63, so the
    # standardised target is +-sqrt(63 / 64) and, against a zero prediction, the loss is 63 / 64.
    model = _zero_prediction(AudioMAE(micro_config(norm_pix_loss=True)))
    t, f = torch.meshgrid(torch.arange(200), torch.arange(80), indexing="ij")
    x = (3.0 * (-1.0) ** (t + f)).float()[None, None]
    out = model(x, torch.rand(1, 250))
    torch.testing.assert_close(out.loss, torch.tensor(63 / 64), rtol=0, atol=1e-6)
    plain = _zero_prediction(AudioMAE(micro_config()))
    torch.testing.assert_close(plain(x, torch.rand(1, 250)).loss, torch.tensor(9.0))


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
    # head_dim 8: pair i = (2i, 2i + 1) turns by position * 10000^(-i / 4) radians. Position 3:
    # pair 0 by 3 rad, pair 2 by 0.03 rad. Unit vectors, so the outputs are cos / sin values.
    x = torch.zeros(1, 1, 4, 8)
    x[0, 0, 3, 0] = 1.0  # pair 0 = (1, 0)
    x[0, 0, 3, 5] = 1.0  # pair 2 = (0, 1)
    out = apply_rope(x, *rope_tables(torch.arange(4), 8))[0, 0, 3]
    cos3, sin3 = -0.9899924966, 0.1411200081  # cos(3), sin(3)
    cos_03, sin_03 = 0.9995500337, 0.0299955002  # cos(0.03), sin(0.03)
    torch.testing.assert_close(out[0:2], torch.tensor([cos3, sin3]))
    torch.testing.assert_close(out[4:6], torch.tensor([-sin_03, cos_03]))
    torch.testing.assert_close(out[[2, 3, 6, 7]], torch.zeros(4))
    y = torch.randn(1, 1, 4, 8)
    torch.testing.assert_close(apply_rope(y, *rope_tables(torch.arange(4), 8))[0, 0, 0], y[0, 0, 0])


def test_rope_scores_depend_on_the_relative_position_only():
    # The defining property: <rope(q, m), rope(k, n)> is a function of m - n.
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rope(q, *rope_tables(torch.tensor([m]), 16))
        kn = apply_rope(k, *rope_tables(torch.tensor([n]), 16))
        return (qm * kn).sum()

    torch.testing.assert_close(score(5, 2), score(40, 37), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(score(0, 0), (q * k).sum(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 3), atol=1e-3)


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
