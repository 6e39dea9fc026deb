"""Labelled task definitions: what each clip of a task contains and which labels it carries.

Each task has a *planner* ``(rng, slot) -> ClipPlan``. Labels come from ``slot.index`` (round-robin
over the label set, so every split is class-balanced); everything else (octave, timbre, onset,
duration, loudness, background level) is drawn from the clip's generator. Timbres are only ever
taken from ``slot.timbre_ids``, the ids reserved for the clip's split (see ``corpus.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .clips import ClipPlan, Event, spread_events
from .sounds import FAMILIES, PITCH_CLASSES

N_FOLDS = 5  # the k-fold task uses HEAR's 5 folds
TRAINVALTEST = {"train": 0.6, "valid": 0.2, "test": 0.2}  # HEAR-like split proportions
COUNT_LABELS = ("1", "2", "3", "4")
PITCH_LOWEST = 48  # C3 (131 Hz): three octaves up to B5 (988 Hz), every pitch class thrice


@dataclass(frozen=True)
class ClipSlot:
    """Where a clip sits: its index within the split, the split's timbre ids, its background id."""

    index: int
    timbre_ids: range
    background_id: int
    clip_s: float


Planner = Callable[[np.random.Generator, ClipSlot], ClipPlan]


@dataclass(frozen=True)
class TaskSpec:
    """A HEAR scene task: name, prediction type, primary metric, label set, split mode, planner."""

    name: str
    prediction_type: str  # "multiclass" or "multilabel"
    metric: str  # HEAR metric name; the first (and only) entry of ``evaluation``
    labels: tuple[str, ...]
    split_mode: str  # "trainvaltest" or "new_split_kfold"
    planner: Planner

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names in HEAR order: train/valid/test or fold00..fold04."""
        if self.split_mode == "trainvaltest":
            return tuple(TRAINVALTEST)
        return tuple(f"fold{i:02d}" for i in range(N_FOLDS))

    def split_sizes(self, n: int) -> dict[str, int]:
        """Clips per split for ``n`` clips in all (sums to ``n``; the last split gets the rest)."""
        if self.split_mode == "trainvaltest":
            sizes = [int(round(n * f)) for f in TRAINVALTEST.values()]
        else:
            sizes = [n // N_FOLDS + (i < n % N_FOLDS) for i in range(N_FOLDS)]
        sizes[-1] = n - sum(sizes[:-1])
        return dict(zip(self.splits, sizes, strict=True))


def make_event(
    rng: np.random.Generator,
    family: str,
    slot: ClipSlot,
    onset: float,
    duration: float,
    gain_db: float = 0.0,
    pitch: float | None = None,
) -> Event:
    """An event of ``family`` with a timbre drawn from the split's ids (and a pitch if harmonic)."""
    timbre_id = slot.timbre_ids[int(rng.integers(len(slot.timbre_ids)))]
    if family == "harmonic" and pitch is None:
        pitch = float(rng.uniform(40.0, 88.0))
    return Event(family, timbre_id, float(onset), float(duration), float(gain_db), pitch)


def finish(
    rng: np.random.Generator,
    slot: ClipSlot,
    events: list[Event],
    labels: tuple[str, ...],
    snr_db: tuple[float, float] = (20.0, 35.0),
) -> ClipPlan:
    """Wrap events into a plan with a background SNR and a final peak level in [0.5, 0.9]."""
    snr = float(rng.uniform(*snr_db))
    return ClipPlan(tuple(events), labels, slot.background_id, snr, float(rng.uniform(0.5, 0.9)))


def single_placement(
    rng: np.random.Generator, clip_s: float, lo: float, hi: float
) -> tuple[float, float]:
    """(onset, duration) of one event lasting ``lo..hi`` s that fits inside the clip."""
    dur = float(rng.uniform(lo, min(hi, clip_s - 0.1)))
    return float(rng.uniform(0.0, clip_s - dur)), dur


def plan_pitch(rng: np.random.Generator, slot: ClipSlot) -> ClipPlan:
    """One harmonic note; label = its pitch class. Octave and +-15 cent detune vary freely."""
    cls = slot.index % len(PITCH_CLASSES)
    midi = PITCH_LOWEST + cls + 12 * int(rng.integers(3)) + float(rng.uniform(-0.15, 0.15))
    onset, dur = single_placement(rng, slot.clip_s, 0.4, 1.8)
    event = make_event(rng, "harmonic", slot, onset, dur, pitch=midi)
    return finish(rng, slot, [event], (PITCH_CLASSES[cls],))


def plan_family(rng: np.random.Generator, slot: ClipSlot) -> ClipPlan:
    """One event of one family; label = the family."""
    family = FAMILIES[slot.index % len(FAMILIES)]
    onset, dur = single_placement(rng, slot.clip_s, 0.3, 1.6)
    return finish(rng, slot, [make_event(rng, family, slot, onset, dur)], (family,))


def plan_count(rng: np.random.Generator, slot: ClipSlot) -> ClipPlan:
    """1-4 non-overlapping events of random families, >= 60 ms apart; label = how many."""
    k, min_gap = slot.index % len(COUNT_LABELS) + 1, 0.06
    durs = rng.uniform(0.12, 0.4, k)
    room = slot.clip_s - (k + 1) * min_gap
    durs = durs * min(1.0, 0.98 * room / durs.sum())
    onsets = spread_events(rng, durs, slot.clip_s, min_gap)
    fams = rng.choice(FAMILIES, k)
    events = [
        make_event(rng, str(f), slot, o, d, gain_db=rng.uniform(-6.0, 0.0))
        for f, o, d in zip(fams, onsets, durs, strict=True)
    ]
    return finish(rng, slot, events, (str(k),))


def plan_mix(rng: np.random.Generator, slot: ClipSlot) -> ClipPlan:
    """1-3 events of distinct families, free to overlap; labels = the families present."""
    m = slot.index % 3 + 1
    fams = sorted(rng.choice(len(FAMILIES), m, replace=False))
    events = []
    for f in fams:
        onset, dur = single_placement(rng, slot.clip_s, 0.3, 1.5)
        events.append(
            make_event(rng, FAMILIES[f], slot, onset, dur, gain_db=rng.uniform(-6.0, 0.0))
        )
    return finish(rng, slot, events, tuple(FAMILIES[f] for f in fams))


def plan_pool(rng: np.random.Generator, slot: ClipSlot) -> ClipPlan:
    """Unlabelled pretraining mix: 1-6 events of any family, overlapping, wide loudness range."""
    events = []
    for _ in range(int(rng.integers(1, 7))):
        onset, dur = single_placement(rng, slot.clip_s, 0.1, 2.5)
        family = str(rng.choice(FAMILIES))
        events.append(make_event(rng, family, slot, onset, dur, gain_db=rng.uniform(-12.0, 0.0)))
    return finish(rng, slot, events, (), snr_db=(10.0, 35.0))


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("synth_pitch", "multiclass", "top1_acc", PITCH_CLASSES, "trainvaltest", plan_pitch),
    TaskSpec("synth_family", "multiclass", "top1_acc", FAMILIES, "trainvaltest", plan_family),
    TaskSpec("synth_count", "multiclass", "top1_acc", COUNT_LABELS, "new_split_kfold", plan_count),
    TaskSpec("synth_mix", "multilabel", "mAP", FAMILIES, "trainvaltest", plan_mix),
)
