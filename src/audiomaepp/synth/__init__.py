"""Deterministic synthetic audio corpus for the out-of-the-box demo and the tests (numpy only).

Five sound families with real acoustic structure (harmonic notes, noise textures, impulsive hits,
chirps / modulated tones, formant vowels) are mixed into clips over a quiet background, giving an
unlabelled pretraining pool and labelled HEAR 2021 scene tasks::

    from audiomaepp.synth import CorpusConfig, generate_corpus
    info = generate_corpus("demo_corpus", CorpusConfig())       # ~600 pool clips + 4 tasks
    info.pool_dir                 # Path with pool_00000.wav ... (4 s, 16 kHz mono)
    info.task_dirs["synth_pitch"] # HEAR folder: task_metadata.json, train.json, 16000/train/

Tasks: ``synth_pitch`` (12 pitch classes), ``synth_family`` (5 families), ``synth_count``
(1-4 events, 5-fold), ``synth_mix`` (families present, multilabel mAP). Timbre and background
ids never cross splits (see :mod:`audiomaepp.synth.corpus`).
"""

from .clips import ClipPlan, Event, render_clip
from .corpus import (
    SYNTH_VERSION,
    CorpusConfig,
    CorpusInfo,
    generate_corpus,
    load_corpus,
)
from .dsp import SAMPLE_RATE
from .sounds import FAMILIES, PITCH_CLASSES, Timbre, draw_timbre, render_event
from .tasks import TASKS, TaskSpec

__all__ = [
    "SAMPLE_RATE",
    "SYNTH_VERSION",
    "FAMILIES",
    "PITCH_CLASSES",
    "TASKS",
    "CorpusConfig",
    "CorpusInfo",
    "ClipPlan",
    "Event",
    "TaskSpec",
    "Timbre",
    "draw_timbre",
    "generate_corpus",
    "load_corpus",
    "render_clip",
    "render_event",
]
