"""A real recorded task for the fine-tuning benchmark: the octave of recorded piano notes.

Source: the 88 piano-key recordings (one per key, A0-C8, 44.1 kHz, 1.7-13 s each) that ship in
the ``MyPiano`` 0.0.1 wheel on PyPI (``pip install --no-deps mypiano==0.0.1``; the package code is
GPLv3, its ``data/FreeSound/CREDIT`` names the recordings' source: FreeSound pack 25405 by
TEDAgame). The package is not a dependency of audiomaepp: the benchmark needs it as an optional
install and builds the task offline from the installed files (the package is never imported; its
sound-device dependencies need not be installed).

The task (HEAR format, ``new_split_kfold``, 5 folds, 7 classes, chance 14 %): each note gives a
2-s clip of its attack (0-2 s) and, when the note lasts at least 4 s, a second clip of its decay
(2-4 s); the label is the note's octave in scientific pitch notation, 1-7 (the three keys of
octave 0 count as 1, C8 as 7: 12-15 keys per class). Key ``k`` (0 = A0) goes to fold ``k % 5``
with both of its clips, so a test note is never heard in training: a test E4 must be placed
among the octaves from its neighbours D#4 and F4. (The notes' pitch class, 12 classes across
octaves, was tried first: with ~90 training clips the MLP probe stays at chance, so it cannot
separate recipes.)
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
SR = 16_000
CLIP_S = 2.0
N_FOLDS = 5
NAME = "piano_octave"
OCTAVES = tuple(str(o) for o in range(1, 8))


def piano_dir() -> Path:
    """The installed MyPiano package's recordings folder (without importing the package)."""
    spec = importlib.util.find_spec("MyPiano")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the real-audio task needs the MyPiano recordings: pip install --no-deps mypiano==0.0.1"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "FreeSound"
    if len(list(folder.glob("*.wav"))) != 88:
        raise SystemExit(f"{folder}: expected the 88 piano-key recordings of MyPiano 0.0.1")
    return folder


def key_index(name: str) -> tuple[int, str]:
    """``"c#4"`` -> (key number 0..87 with A0 = 0, octave label ``"4"``; 0 -> 1, 8 -> 7)."""
    m = re.fullmatch(r"([a-g]#?)(\d)", name)
    if m is None:
        raise ValueError(f"unexpected piano file name {name!r}")
    pc = PITCH_CLASSES.index(m.group(1).upper())
    octave = int(m.group(2))
    return 12 * (octave + 1) + pc - 21, str(min(max(octave, 1), 7))


def build(out: Path) -> Path:
    """Write the HEAR task folder ``out/piano_pitch`` (reused when complete); returns its path."""
    task = out / NAME
    if (task / "task_metadata.json").is_file():
        return task
    src = piano_dir()
    audio_dir = task / "16000"
    splits: dict[str, dict[str, list[str]]] = {f"fold{i:02d}": {} for i in range(N_FOLDS)}
    n = int(CLIP_S * SR)
    for path in sorted(src.glob("*.wav")):
        key, label = key_index(path.stem)
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
        wave = soxr.resample(wave.mean(axis=1), sr, SR).astype(np.float32)
        fold = f"fold{key % N_FOLDS:02d}"
        for part, start in enumerate(range(0, len(wave) - n + 1, n)[:2]):
            clip = wave[start : start + n]
            name = f"key{key:02d}_{part}.wav"
            (audio_dir / fold).mkdir(parents=True, exist_ok=True)
            sf.write(audio_dir / fold / name, clip, SR, subtype="FLOAT")
            splits[fold][name] = [label]
        if len(wave) < n:  # the highest keys ring < 2 s: one zero-padded clip
            name = f"key{key:02d}_0.wav"
            (audio_dir / fold).mkdir(parents=True, exist_ok=True)
            sf.write(audio_dir / fold / name, np.pad(wave, (0, n - len(wave))), SR, subtype="FLOAT")
            splits[fold][name] = [label]
    for split, labels in splits.items():
        (task / f"{split}.json").write_text(json.dumps(labels, indent=1))
    (task / "labelvocabulary.csv").write_text(
        "idx,label\n" + "".join(f"{i},{o}\n" for i, o in enumerate(OCTAVES))
    )
    meta = {
        "task_name": NAME,
        "version": "mypiano-0.0.1",
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "split_mode": "new_split_kfold",
        "nfolds": N_FOLDS,
        "sample_duration": CLIP_S,
        "evaluation": ["top1_acc"],
        "sample_rate": SR,
    }
    (task / "task_metadata.json").write_text(json.dumps(meta, indent=1))  # last: marks complete
    return task


if __name__ == "__main__":
    import sys

    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "piano_task")))
