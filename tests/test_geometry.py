"""The model's input geometry has one source, the front end: 80 mel bins, and 200-frame windows
(``INPUT_FRAMES``) at 100 frames per second. ``AudioMAEConfig.img_size`` is frozen to it, since
pretraining crops, fine-tuning windows and embedding chunks all cut 200-frame windows."""

from __future__ import annotations

import json

import pytest

from audiomaepp import AudioMAE, AudioMAEConfig
from audiomaepp.errors import CheckpointError
from audiomaepp.model.io import CONFIG_NAME, save_pretrained
from audiomaepp.model.release import config_from_release_args

MICRO = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_num_heads=2)


def test_img_size_is_the_front_ends_input_and_cannot_be_changed():
    assert AudioMAEConfig().img_size == (200, 80) == AudioMAEConfig.preset("tiny").img_size
    for bad in [(400, 80), (100, 80), (200, 128)]:  # each divisible by the 4 x 16 patches
        with pytest.raises(ValueError, match=r"img_size=\[\d+, \d+\].*fixed at \[200, 80\]"):
            AudioMAEConfig(img_size=bad, **MICRO)
    with pytest.raises(ValueError, match="fixed at"):
        AudioMAEConfig.preset("tiny", img_size=[400, 80])


def test_a_model_folder_with_another_input_size_is_refused_naming_file_and_field(tmp_path):
    """Before: a (400, 80) model loaded fine, then failed on the first 200-frame crop or chunk."""
    save_pretrained(AudioMAE(AudioMAEConfig(**MICRO)), tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta["config"]["img_size"] = [400, 80]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        AudioMAE.from_pretrained(tmp_path)
    assert str(tmp_path / CONFIG_NAME) in str(err.value) and "img_size" in str(err.value)


def test_a_release_config_for_another_front_end_is_refused():
    args = {"img_size": [1024, 128], "patch_size": [16, 16], "embed_dim": 64, "depth": 2}
    with pytest.raises((ValueError, CheckpointError), match="img_size"):
        config_from_release_args({**args, "num_heads": 4})
