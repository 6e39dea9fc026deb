"""Clips: a plan (which events, where, how loud, which background) and its rendering to audio.

A :class:`ClipPlan` holds every generating parameter that matters for labels, so the plan alone
says why a clip carries its labels (it is written to ``meta/<task>.json``). Rendering adds the
sample-level randomness (phases, noise samples) from the clip's own generator.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np

from . import dsp
from .sounds import draw_timbre, render_event


@dataclass(frozen=True)
class Event:
    """One sound event inside a clip (times in seconds, ``pitch`` as a MIDI number or None)."""

    family: str
    timbre_id: int
    onset: float
    duration: float
    gain_db: float
    pitch: float | None = None


@dataclass(frozen=True)
class ClipPlan:
    """Everything that defines a clip: its events, labels and background, ``peak`` of the result."""

    events: tuple[Event, ...]
    labels: tuple[str, ...]
    background_id: int
    snr_db: float  # event mix RMS over background RMS
    peak: float  # final peak amplitude, in [0.5, 0.9]

    def to_json(self) -> dict:
        """JSON-ready dict (events as a list of dicts)."""
        d = asdict(self)
        d["events"] = [asdict(e) for e in self.events]
        d["labels"] = list(self.labels)
        return d


def clip_rng(seed: int, role: str, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of ``role`` (e.g. ``"synth_pitch/train"``).

    Seeded from ``(seed, crc32(role), index)`` alone, so clips can be made in any order or in
    parallel and still come out identical.
    """
    return np.random.default_rng([seed, zlib.crc32(role.encode()), index])


def spread_events(
    rng: np.random.Generator, durations: np.ndarray, clip_s: float, min_gap: float
) -> np.ndarray:
    """Onsets ``(k,)`` of disjoint events lasting ``durations`` ``(k,)``, gaps >= ``min_gap``.

    The slack left after the events and minimum gaps is split at random (Dirichlet) between the
    ``k + 1`` gaps, so positions vary but events never touch. Durations must fit (checked).
    """
    k = len(durations)
    slack = clip_s - durations.sum() - (k + 1) * min_gap
    if slack < 0:
        raise ValueError(f"{k} events of {durations.sum():.2f} s do not fit in {clip_s} s")
    gaps = min_gap + slack * rng.dirichlet(np.ones(k + 1))
    starts = np.cumsum(gaps[:k]) + np.concatenate([[0.0], np.cumsum(durations[:-1])])
    return starts


def background(seed: int, background_id: int, n: int) -> np.ndarray:
    """Room-like background ``(n,)`` with unit RMS: pink-to-brown noise plus an optional mains hum.

    Seeded by ``background_id`` alone, so a background id names one exact noise recording.
    """
    rng = np.random.default_rng([seed, zlib.crc32(b"background"), background_id])
    freqs = dsp.rfft_freqs(dsp.fft_size(n))
    x = dsp.shaped_noise(rng, n, dsp.tilt(freqs, rng.uniform(0.5, 2.0)))
    if rng.random() < 0.3:
        hum_hz = 50.0 if rng.random() < 0.5 else 60.0
        t = dsp.time_axis(n)
        x = x + rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * hum_hz * t) * np.sqrt(2)
    return x / (dsp.rms(x) + 1e-12)


def render_clip(plan: ClipPlan, n: int, seed: int, rng: np.random.Generator) -> np.ndarray:
    """Mix ``plan``'s events over its background -> ``(n,)`` float32 with peak ``plan.peak``."""
    mix = np.zeros(n)
    for ev in plan.events:
        start = int(round(ev.onset * dsp.SAMPLE_RATE))
        length = min(int(round(ev.duration * dsp.SAMPLE_RATE)), n - start)
        timbre = draw_timbre(ev.family, ev.timbre_id, seed)
        mix[start : start + length] += 10 ** (ev.gain_db / 20) * render_event(
            timbre, length, rng, ev.pitch
        )
    level = dsp.rms(mix) * 10 ** (-plan.snr_db / 20)
    mix = mix + level * background(seed, plan.background_id, n)
    return dsp.normalise_peak(mix, plan.peak).astype(np.float32)
