"""Fault injection: untrusted inputs (model configs, weights, HEAR task splits, checkpoint state).

Each test names the fault it injects and asserts what is kept: a clear error naming the file and
field, raised before anything large is allocated or anything outside the input is read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from audiomaepp.errors import CheckpointError
from audiomaepp.evaluation.tasks import TaskFormatError, read_task
from audiomaepp.model import AudioMAE, AudioMAEConfig
from audiomaepp.model.io import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

MICRO = dict(
    embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2
)


# ---- model config.json ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("num_heads", 0),  # today: ZeroDivisionError
        ("patch_size", [0, 16]),  # today: ZeroDivisionError
        ("img_size", [200]),  # today: IndexError
        ("depth", -3),  # today: an encoder with no blocks
        ("embed_dim", 10**7),  # today: allocates ~TBs before any check
        ("num_heads", "8"),  # wrong type
        ("decoder_depth", 2.5),  # wrong type
        ("mlp_ratio", -1.0),
        ("img_size", [10**6, 80]),  # 2.5e5 patches: quadratic attention, giant pos-embed
        ("mask_ratio", 0.999),  # keeps no patch
    ],
)
def test_malformed_model_config_is_refused_naming_file_and_field(
    tmp_path: Path, field: str, value
) -> None:
    """Fault: a config.json with a bounded field out of range or of the wrong type."""
    save_pretrained(AudioMAE(AudioMAEConfig(**MICRO)), tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta["config"][field] = value
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        AudioMAE.from_pretrained(tmp_path)
    assert str(tmp_path / CONFIG_NAME) in str(err.value) and field in str(err.value)


def test_config_that_disagrees_with_weights_fails_before_allocating(
    tmp_path: Path, monkeypatch
) -> None:
    """Fault: config.json claims a far larger model than model.safetensors holds.

    The header is compared with a meta-device model, so the real model is never built: building
    one raises here, and the error names the mis-shaped keys and the weights file.
    """
    save_pretrained(AudioMAE(AudioMAEConfig(**MICRO)), tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta["config"].update(embed_dim=4096, num_heads=32)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    real_init = AudioMAE.__init__

    def no_real_models(self, *a, **kw):
        real_init(self, *a, **kw)
        if next(self.parameters()).device.type != "meta":
            raise AssertionError("a real model was allocated before the header check")

    monkeypatch.setattr(AudioMAE, "__init__", no_real_models)
    with pytest.raises(CheckpointError, match="mis-shaped") as err:
        AudioMAE.from_pretrained(tmp_path)
    assert WEIGHTS_NAME in str(err.value)


def test_truncated_weights_header_is_a_checkpoint_error(tmp_path: Path) -> None:
    """Fault: model.safetensors cut to 10 bytes."""
    save_pretrained(AudioMAE(AudioMAEConfig(**MICRO)), tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes((tmp_path / WEIGHTS_NAME).read_bytes()[:10])
    with pytest.raises(CheckpointError, match=WEIGHTS_NAME):
        AudioMAE.from_pretrained(tmp_path)


def test_weights_with_an_extra_tensor_are_refused(tmp_path: Path) -> None:
    """Fault: a weights file with an unexpected key; kept: the error lists it."""
    model = AudioMAE(AudioMAEConfig(**MICRO))
    save_pretrained(model, tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["evil"] = torch.zeros(3)
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match="unexpected key.*evil"):
        AudioMAE.from_pretrained(tmp_path)


# ---- classifier directories (the same reader) ----------------------------------------------------
def _classifier(labels=("dog", "cat", "bird")):
    from audiomaepp.finetune import build_classifier

    return build_classifier("random:tiny", list(labels), "multiclass", overrides=MICRO)


def test_classifier_whose_header_disagrees_is_refused_before_allocating(
    tmp_path: Path, monkeypatch
) -> None:
    """Fault: a classifier's model.safetensors holds a head of another size than config.json says.

    The classifier is built on the meta device and compared with the header first: building a real
    one raises here, and the error names the mis-shaped head and the weights file.
    """
    from audiomaepp.finetune import AudioClassifier

    clf = _classifier()
    clf.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in clf.state_dict().items()}
    state["head.fc.weight"] = torch.zeros(7, state["head.fc.weight"].shape[1])  # tampered
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    real_init = AudioClassifier.__init__

    def no_real_models(self, *a, **kw):
        real_init(self, *a, **kw)
        if next(self.parameters()).device.type != "meta":
            raise AssertionError("a real classifier was allocated before the header check")

    monkeypatch.setattr(AudioClassifier, "__init__", no_real_models)
    with pytest.raises(CheckpointError, match=r"mis-shaped.*head\.fc\.weight") as err:
        AudioClassifier.from_pretrained(tmp_path)
    assert WEIGHTS_NAME in str(err.value)


def test_a_folder_of_the_other_kind_is_refused_by_its_format_tag(tmp_path: Path) -> None:
    """Fault: a classifier folder where an encoder is wanted, and the reverse; a missing tag."""
    from audiomaepp.finetune import AudioClassifier

    _classifier().save_pretrained(tmp_path / "clf")
    AudioMAE(AudioMAEConfig(**MICRO)).save_pretrained(tmp_path / "enc")
    with pytest.raises(CheckpointError, match="'audiomaepp-classifier/1' .AudioClassifier.") as e:
        AudioMAE.from_pretrained(tmp_path / "clf")
    assert str(tmp_path / "clf" / CONFIG_NAME) in str(e.value) and "predict" in str(e.value)
    with pytest.raises(CheckpointError, match="'audiomaepp-model/1' .AudioMAE.") as e:
        AudioClassifier.from_pretrained(tmp_path / "enc")
    assert "audiomaepp finetune" in str(e.value)
    meta = json.loads((tmp_path / "enc" / CONFIG_NAME).read_text())
    del meta["format"]
    (tmp_path / "enc" / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format None"):
        AudioMAE.from_pretrained(tmp_path / "enc")


def test_a_classifier_with_a_broken_label_list_names_the_file(tmp_path: Path) -> None:
    """Fault: labels.json missing, then of the wrong type, then one label short."""
    from audiomaepp.finetune import AudioClassifier

    _classifier().save_pretrained(tmp_path)
    labels = tmp_path / "labels.json"
    for text, message in [
        (None, "labels.json"),
        ('{"dog": 0}', "labels.json: expected a JSON list"),
        ('["dog", "cat"]', "2 labels for 3 classes"),
    ]:
        labels.unlink(missing_ok=True)
        if text is not None:
            labels.write_text(text)
        with pytest.raises(CheckpointError, match=message):
            AudioClassifier.from_pretrained(tmp_path)


# ---- HEAR task split files -----------------------------------------------------------------------
def _task(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True)
    meta = {
        "task_name": "t",
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "split_mode": "trainvaltest",
        "evaluation": ["top1_acc"],
    }
    (root / "task_metadata.json").write_text(json.dumps(meta))
    (root / "labelvocabulary.csv").write_text("idx,label\n0,a\n1,b\n")
    for split in ("train", "valid", "test"):
        (root / f"{split}.json").write_text(json.dumps({n: ["a"] for n in names}))
        (root / "16000" / split).mkdir(parents=True)
    return root


@pytest.mark.parametrize(
    "name", ["../../secret.wav", "/etc/passwd", "sub/../../x.wav", "..\\x.wav", "C:x.wav"]
)
def test_task_file_names_cannot_leave_the_task_folder(tmp_path: Path, name: str) -> None:
    """Fault: a split JSON naming a file outside ``16000/<split>/``; kept: nothing is read."""
    (tmp_path / "secret.wav").write_bytes(b"RIFF")
    root = _task(tmp_path / "task", ["ok.wav", name])
    with pytest.raises(TaskFormatError, match="train.json") as err:
        read_task(root, check_audio=False)
    assert repr(name) in str(err.value)


def test_task_with_plain_and_nested_names_is_accepted(tmp_path: Path) -> None:
    """Control for the test above: ordinary names (also in sub-folders) still load."""
    task = read_task(_task(tmp_path / "task", ["a.wav", "sub/b.wav"]), check_audio=False)
    assert task.files("train") == ["a.wav", "sub/b.wav"]


@pytest.mark.parametrize("link", ["audio", "split", "audio_dir"])
def test_symlink_leading_out_of_the_task_folder_is_refused(tmp_path: Path, link: str) -> None:
    """Fault: a task folder whose audio file, split JSON or ``16000/<split>`` folder is a symlink
    to a file elsewhere; kept: refused with the file named, before anything is read from it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(b"RIFF")
    (outside / "train.json").write_text(json.dumps({"a.wav": ["a"]}))
    root = _task(tmp_path / "task", ["a.wav"])
    for split in ("train", "valid", "test"):
        (root / "16000" / split / "a.wav").write_bytes(b"RIFF")
    if link == "audio":
        victim = root / "16000" / "valid" / "a.wav"
        victim.unlink()
        victim.symlink_to(outside / "secret.wav")
    elif link == "split":
        victim = root / "train.json"
        victim.unlink()
        victim.symlink_to(outside / "train.json")
    else:
        victim = root / "16000" / "test"
        shutil.rmtree(victim)
        victim.symlink_to(outside)
        (outside / "a.wav").write_bytes(b"RIFF")
    with pytest.raises(TaskFormatError, match="outside the task folder") as err:
        read_task(root)
    assert str(victim) in str(err.value)


def test_symlink_that_stays_inside_the_task_folder_is_accepted(tmp_path: Path) -> None:
    """Control for the test above: a link to another file of the same task still loads."""
    root = _task(tmp_path / "task", ["a.wav", "b.wav"])
    for split in ("train", "valid", "test"):
        (root / "16000" / split / "a.wav").write_bytes(b"RIFF")
        (root / "16000" / split / "b.wav").symlink_to(root / "16000" / split / "a.wav")
    task = read_task(root)
    assert task.audio_path("test", "b.wav").resolve() == (root / "16000/test/a.wav").resolve()
