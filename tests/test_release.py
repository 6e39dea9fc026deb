"""Release import: exact reproduction of the release's outputs, and safe, strict loading."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from audiomaepp import AudioMAE, CheckpointError, UnsafeCheckpointError
from audiomaepp.embedding import group_tokens
from audiomaepp.model.release import convert_release, load_release_checkpoint

TOL = 1e-5  # fp32 on CPU


@pytest.fixture(scope="module")
def outputs(converted_dir, reference):
    model = AudioMAE.from_pretrained(converted_dir)
    x = torch.from_numpy(reference["lms"])
    with torch.no_grad():
        out = model(x, torch.from_numpy(reference["noise"]))
        tokens = model.encode(x)
    return {
        "encoder_out_masked": out.latent,
        "pred": out.pred,
        "target": model.patchify(x),
        "loss": out.loss,
        "mask": out.mask,
        "ids_restore": out.ids_restore,
        "encoder_tokens": tokens,
        "forward_features": group_tokens(tokens, "release"),
    }


@pytest.mark.parametrize(
    "name",
    [
        "encoder_out_masked",
        "pred",
        "target",
        "loss",
        "mask",
        "ids_restore",
        "encoder_tokens",
        "forward_features",
    ],
)
def test_converted_model_reproduces_release(outputs, reference, name):
    ours = outputs[name].numpy()
    assert ours.shape == reference[name].shape
    assert np.abs(ours.astype(np.float64) - reference[name]).max() <= TOL


def test_converted_config_records_release_quirks(converted_dir):
    cfg = AudioMAE.from_pretrained(converted_dir).config
    assert (cfg.swiglu_norm, cfg.token_layout, cfg.encoder_rope) == ("ln2", "release", "none")
    assert (cfg.embed_dim, cfg.depth, cfg.decoder_embed_dim, cfg.decoder_depth) == (64, 2, 32, 2)
    assert cfg.extra["source"] == "release"


def test_embedded_release_args_are_used_without_a_config(conformance_dir, tmp_path, converted_dir):
    model = convert_release(conformance_dir / "checkpoint-99.pth", tmp_path / "m")
    assert model.config.to_dict() | {"extra": {}} == AudioMAE.from_pretrained(
        converted_dir
    ).config.to_dict() | {"extra": {}}


def test_checkpoint_args_become_inert_data(conformance_dir):
    ckpt = load_release_checkpoint(conformance_dir / "checkpoint-99.pth")
    args = ckpt["args"]
    assert isinstance(args, dict) and args["config"]["model"]["model_args"]["embed_dim"] == 64
    assert args["world_size"] == 8


def test_cli_convert_release(conformance_dir, tmp_path):
    from audiomaepp.cli.main import main

    rc = main(
        [
            "convert-release",
            str(conformance_dir / "checkpoint-99.pth"),
            str(tmp_path / "m"),
            "--release-config",
            str(conformance_dir / "config.json"),
        ]
    )
    assert rc == 0 and (tmp_path / "m" / "model.safetensors").is_file()
    rc = main(
        [
            "convert-release",
            str(conformance_dir / "checkpoint-99.pth"),
            str(tmp_path / "x"),
            "--preset",
            "base",
        ]
    )
    assert rc == 1 and not (tmp_path / "x" / "model.safetensors").exists()


class _Exploit:
    """Pickles to a call of os.system: what a malicious checkpoint looks like."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path, conformance_dir):
    marker = tmp_path / "pwned"
    good = load_release_checkpoint(conformance_dir / "checkpoint-99.pth")["model"]
    bad = tmp_path / "evil.pth"
    torch.save({"model": good, "args": _Exploit(marker)}, bad)
    with zipfile.ZipFile(bad) as z:  # the pickle really does ask for os.system
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        assert b"system" in z.read(pkl)
    with pytest.raises(UnsafeCheckpointError, match="system") as info:
        convert_release(bad, tmp_path / "out", preset="tiny")
    assert "Nothing from it was executed" in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # the same file through the command line: exit code 1, still nothing executed
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "audiomaepp.cli.main",
            "convert-release",
            str(bad),
            str(tmp_path / "out"),
            "--preset",
            "tiny",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "refused" in res.stderr
    assert not marker.exists()


def test_legacy_plain_pickle_exploit_is_refused(tmp_path):
    import pickle

    marker = tmp_path / "pwned2"
    bad = tmp_path / "evil_legacy.pth"
    bad.write_bytes(pickle.dumps({"model": _Exploit(marker)}, protocol=2))
    with pytest.raises(CheckpointError):
        load_release_checkpoint(bad)
    assert not marker.exists()


def _save_state(tmp_path, state, name):
    path = tmp_path / name
    torch.save({"model": state}, path)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("decoder.decoder_pred.bias"), r"missing key\(s\): decoder\.pred\.bias"),
        (
            lambda s: s.__setitem__("encoder.blocks.0.extra.weight", torch.zeros(3)),
            r"unexpected key\(s\): encoder\.blocks\.0\.extra\.weight",
        ),
        (
            lambda s: s.__setitem__("cls_token", torch.zeros(1, 1, 65)),
            r"mis-shaped key\(s\): encoder\.cls_token \(1, 1, 65\) vs model \(1, 1, 64\)",
        ),
        (lambda s: s.__setitem__("encoder.blocks.0.rope.freqs", torch.ones(8)), r"rope\.freqs"),
    ],
)
def test_bad_keys_are_named(tmp_path, conformance_dir, edit, message):
    state = dict(load_release_checkpoint(conformance_dir / "checkpoint-99.pth")["model"])
    edit(state)
    path = _save_state(tmp_path, state, "edited.pth")
    with pytest.raises(CheckpointError, match=message):
        convert_release(path, tmp_path / "out", release_config=conformance_dir / "config.json")


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_release_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_release_checkpoint(junk)
