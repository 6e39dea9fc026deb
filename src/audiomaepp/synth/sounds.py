"""Sound-event synthesisers: five families with real acoustic structure.

A *timbre* is the fixed, reusable part of a sound source (harmonic amplitude profile, envelope
shape, noise colour, resonant modes, formant scale of a "speaker", ...). It is drawn from its own
generator seeded by ``(seed, family, timbre_id)``, so a timbre id names one instrument-like source
and the same id always sounds the same. An *event* is one sounding of a timbre: it adds per-event
variation (pitch, vowel, start frequency, exact noise samples) from the clip's generator.

Families (the ``synth_family`` labels): ``harmonic`` (pitched notes), ``noise`` (coloured /
band-limited noise, rain-like crackle), ``impulse`` (clicks, knocks, drum-like hits), ``chirp``
(sweeps, FM and AM tones), ``vowel`` (glottal pulse train through formant resonances).
Every renderer returns ``(n,)`` float64 with peak 1 (or silence for ``n == 0``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import dsp

FAMILIES = ("harmonic", "noise", "impulse", "chirp", "vowel")
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MAX_PARTIAL_HZ = 7200.0  # keep additive partials clear of the 8 kHz Nyquist (no aliasing)

# Peterson & Barney style (F1, F2, F3) in Hz for an adult voice; a timbre scales them.
VOWEL_FORMANTS = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}


@dataclass(frozen=True)
class Timbre:
    """One reusable source: ``family``, a ``kind`` within it and its numeric ``params``."""

    family: str
    kind: str
    params: dict[str, float] = field(default_factory=dict)


def midi_to_hz(midi: float) -> float:
    """Equal-tempered frequency of a (fractional) MIDI note number; A4 = 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def pitch_class(midi: float) -> str:
    """Name of the nearest pitch class, e.g. ``60.1 -> "C"``."""
    return PITCH_CLASSES[int(round(midi)) % 12]


def timbre_rng(seed: int, family: str, timbre_id: int) -> np.random.Generator:
    """The generator that defines timbre ``timbre_id`` of ``family`` (PCG64, order-independent)."""
    return np.random.default_rng([seed, zlib.crc32(family.encode()), timbre_id])


def draw_timbre(family: str, timbre_id: int, seed: int) -> Timbre:
    """Deterministically draw the parameters of timbre ``timbre_id`` of ``family``."""
    if family not in _FAMILY_FUNCS:
        raise ValueError(f"unknown sound family {family!r}; expected one of {FAMILIES}")
    timbre = _FAMILY_FUNCS[family][0](timbre_rng(seed, family, timbre_id))
    return Timbre(family, timbre.kind, {k: float(v) for k, v in timbre.params.items()})


def render_event(
    timbre: Timbre, n: int, rng: np.random.Generator, pitch: float | None = None
) -> np.ndarray:
    """Render one event of ``timbre`` lasting ``n`` samples -> ``(n,)`` float64, peak 1.

    ``pitch`` (MIDI) is used by the ``harmonic`` family; the others draw their own per-event
    variation from ``rng``.
    """
    if n <= 0:
        return np.zeros(0)
    x = _FAMILY_FUNCS[timbre.family][1](timbre, n, rng, pitch)
    return dsp.normalise_peak(dsp.fade_edges(x), 1.0)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


# --- harmonic notes -----------------------------------------------------------------------------

HARMONIC_PROFILES = ("saw", "square", "mellow", "bright", "random")
ENVELOPES = ("adsr", "pluck", "swell")


def harmonic_timbre(rng: np.random.Generator) -> Timbre:
    """Amplitude profile over partials + envelope + vibrato + slight piano-like inharmonicity."""
    kind = str(rng.choice(HARMONIC_PROFILES))
    p = {
        "envelope": float(rng.integers(len(ENVELOPES))),
        "slope": rng.uniform(0.6, 2.2),  # partial k has amplitude ~ k**-slope (random profile)
        "even_gain": rng.uniform(0.0, 1.0) if kind == "square" else 1.0,
        "peak_hz": _log_uniform(rng, 900.0, 3500.0),  # spectral hump of the "bright" profile
        "inharmonicity": rng.uniform(0.0, 4e-4),
        "jitter_seed": float(rng.integers(2**31)),
        "attack": _log_uniform(rng, 0.005, 0.15),
        "decay": rng.uniform(0.05, 0.4),
        "sustain": rng.uniform(0.3, 0.9),
        "release": rng.uniform(0.05, 0.3),
        "t60": rng.uniform(0.4, 2.5),
        "damping": rng.uniform(0.0, 0.5),  # pluck: partial k decays (1 + damping * (k-1)) faster
        "swell_peak": rng.uniform(0.3, 0.75),
        "swell_curve": rng.uniform(0.7, 2.5),
        "vibrato_depth": rng.choice([0.0, rng.uniform(0.001, 0.006)]),
        "vibrato_rate": rng.uniform(4.0, 7.0),
    }
    return Timbre("harmonic", kind, p)


def partial_amplitudes(timbre: Timbre, f0: float, k: np.ndarray) -> np.ndarray:
    """Amplitude of partials ``k`` ``(K,)`` (1-based) of a note at ``f0`` Hz -> ``(K,)``."""
    p = timbre.params
    if timbre.kind == "saw":
        amps = 1.0 / k
    elif timbre.kind == "square":
        amps = np.where(k % 2 == 1, 1.0, p["even_gain"] * 0.3) / k
    elif timbre.kind == "mellow":
        amps = k**-2.2
    elif timbre.kind == "bright":
        amps = k**-0.7 * (0.15 + dsp.resonance(k * f0, p["peak_hz"], p["peak_hz"] * 0.6))
    else:  # "random": a fixed per-timbre jitter on a power-law slope
        jitter = np.random.default_rng(int(p["jitter_seed"])).normal(0.0, 0.5, 64)
        amps = k ** -p["slope"] * np.exp(jitter[: len(k)])
    return amps


def harmonic_envelopes(timbre: Timbre, n: int, k: np.ndarray) -> np.ndarray:
    """Envelope per partial ``(K, n)`` (pluck) or shared ``(1, n)`` (ADSR / swell)."""
    p = timbre.params
    kind = ENVELOPES[int(p["envelope"])]
    if kind == "pluck":
        t = dsp.time_axis(n).astype(np.float32)
        rates = (6.9078 / p["t60"] * (1.0 + p["damping"] * (k - 1.0))).astype(np.float32)  # (K,)
        rise = np.minimum(t / np.float32(0.002), np.float32(1.0))
        return rise * np.exp(-np.outer(rates, t))  # float32: an exp per partial and sample
    if kind == "swell":
        return dsp.swell(n, p["swell_peak"], p["swell_curve"])[None, :]
    return dsp.adsr(n, p["attack"], p["decay"], p["sustain"], p["release"])[None, :]


def harmonic_note(
    timbre: Timbre, n: int, rng: np.random.Generator, pitch: float | None
) -> np.ndarray:
    """Additive synthesis of a note at MIDI ``pitch``: sum of partials under their envelopes."""
    p = timbre.params
    f0 = midi_to_hz(60.0 if pitch is None else pitch)
    k = np.arange(1, 33, dtype=float)
    stretch = k * np.sqrt(1.0 + p["inharmonicity"] * k * k)  # partial k sits at f0 * stretch_k
    keep = stretch * f0 < MAX_PARTIAL_HZ
    k, stretch = k[keep], stretch[keep]
    t = dsp.time_axis(n)
    rate, depth = p["vibrato_rate"], p["vibrato_depth"]
    # fundamental phase in turns, with sinusoidal vibrato of relative depth ``depth``
    base = f0 * (t + depth * (1 - np.cos(2 * np.pi * rate * t)) / (2 * np.pi * rate))
    cycles = np.outer(stretch, base)  # (K, n)
    cycles += rng.uniform(0.0, 1.0, (len(k), 1))
    partials = dsp.sin_turns(cycles)  # float32 from here on: these arrays dominate the cost
    partials *= harmonic_envelopes(timbre, n, k)
    amps = partial_amplitudes(timbre, f0, k).astype(np.float32)
    return (amps @ partials).astype(np.float64)


# --- noise textures -----------------------------------------------------------------------------

NOISE_KINDS = ("colored", "band", "crackle")


def noise_timbre(rng: np.random.Generator) -> Timbre:
    """Noise colour, pass band(s) or crackle density, plus a slow 'gusty' level modulation."""
    p = {
        "alpha": rng.uniform(-1.0, 2.5),
        "centre": _log_uniform(rng, 250.0, 5000.0),
        "q": _log_uniform(rng, 1.0, 8.0),  # centre / bandwidth of the pass band
        "second_band": rng.uniform(0.0, 1.0),  # > 0.5: a second band an octave-ish above
        "density": _log_uniform(rng, 15.0, 400.0),  # crackle events per second
        "drop_hz": _log_uniform(rng, 1200.0, 6000.0),
        "gust_depth": rng.uniform(0.0, 0.8),
        "gust_rate": _log_uniform(rng, 0.3, 4.0),
        "fade": rng.uniform(0.02, 0.3),
    }
    return Timbre("noise", str(rng.choice(NOISE_KINDS)), p)


def noise_texture(
    timbre: Timbre, n: int, rng: np.random.Generator, pitch: float | None
) -> np.ndarray:
    """Coloured, band-passed or crackling noise under a fade + slow random level modulation."""
    p = timbre.params
    freqs = dsp.rfft_freqs(dsp.fft_size(n))
    if timbre.kind == "colored":
        x = dsp.shaped_noise(rng, n, dsp.tilt(freqs, p["alpha"]))
    elif timbre.kind == "band":
        centre = p["centre"] * 2 ** rng.uniform(-0.25, 0.25)
        resp = dsp.resonance(freqs, centre, centre / p["q"])
        if p["second_band"] > 0.5:
            c2 = min(centre * 2.3, 7000.0)
            resp = resp + 0.5 * dsp.resonance(freqs, c2, c2 / p["q"])
        x = dsp.shaped_noise(rng, n, resp)
    else:
        x = crackle(p, n, rng, freqs)
    gust = dsp.shaped_noise(rng, n, np.exp(-freqs / p["gust_rate"]))  # very slow random wobble
    level = np.clip(1.0 + p["gust_depth"] * 0.5 * gust, 0.05, None)
    fade = dsp.adsr(n, p["fade"], 0.0, 1.0, p["fade"])
    return x * level * fade


def crackle(p: dict[str, float], n: int, rng: np.random.Generator, freqs: np.ndarray) -> np.ndarray:
    """Rain-like crackle: sparse random impulses with heavy-tailed sizes, band-coloured drops."""
    hits = rng.random(n) < p["density"] / dsp.SAMPLE_RATE
    sizes = rng.pareto(2.5, n) * rng.choice([-1.0, 1.0], n)
    drops = dsp.resonance(freqs, p["drop_hz"], p["drop_hz"] * 0.8)
    x = dsp.apply_response(hits * sizes, drops)
    bed = dsp.shaped_noise(rng, n, dsp.tilt(freqs, 1.0))  # a soft pink bed under the drops
    return x / (dsp.rms(x) + 1e-9) + 0.1 * bed


# --- impulsive events ---------------------------------------------------------------------------

IMPULSE_KINDS = ("click", "knock", "kick", "snare", "tom")


def impulse_timbre(rng: np.random.Generator) -> Timbre:
    """Click width, resonant modes of a struck object, or drum-head pitch and decay."""
    p = {
        "click_ms": rng.uniform(0.5, 4.0),
        "click_tilt": rng.uniform(-1.5, 0.5),
        "mode_hz": _log_uniform(rng, 150.0, 900.0),
        "mode_ratio": rng.uniform(1.4, 2.9),  # spacing of the knock's overtone modes
        "n_modes": float(rng.integers(2, 5)),
        "t60": _log_uniform(rng, 0.03, 0.5),
        "drum_hz": _log_uniform(rng, 45.0, 250.0),
        "drop": rng.uniform(0.1, 2.0),  # pitch drop of the drum head, in octaves
        "snare_hz": _log_uniform(rng, 1500.0, 5000.0),
    }
    return Timbre("impulse", str(rng.choice(IMPULSE_KINDS)), p)


def impulsive(timbre: Timbre, n: int, rng: np.random.Generator, pitch: float | None) -> np.ndarray:
    """One hit at the start of the window decaying to (near) silence; shape ``(n,)``."""
    p, t = timbre.params, dsp.time_axis(n)
    t60 = p["t60"] * 2 ** rng.uniform(-0.3, 0.3)
    if timbre.kind == "click":
        freqs = dsp.rfft_freqs(dsp.fft_size(n))
        burst = dsp.shaped_noise(rng, n, dsp.tilt(freqs, p["click_tilt"]))
        return burst * np.exp(-t / (p["click_ms"] / 1000.0))
    if timbre.kind == "knock":
        modes = p["mode_hz"] * p["mode_ratio"] ** np.arange(int(p["n_modes"]))
        modes = modes[modes < MAX_PARTIAL_HZ] * 2 ** rng.uniform(-0.1, 0.1)
        decays = np.exp(-6.9078 * np.outer(1.0 + np.arange(len(modes)), t) / t60)
        return (np.sin(2 * np.pi * np.outer(modes, t)) * decays).sum(axis=0)
    return drum(timbre, t, t60, rng)


def drum(timbre: Timbre, t: np.ndarray, t60: float, rng: np.random.Generator) -> np.ndarray:
    """Kick / tom: a sine whose pitch falls exponentially; snare adds a band-passed noise rattle."""
    p = timbre.params
    f_end = p["drum_hz"] * (2.5 if timbre.kind == "snare" else 1.0)
    drop = p["drop"] if timbre.kind == "kick" else 0.3 * p["drop"]
    sweep_tau = 0.03
    # instantaneous f(t) = f_end * 2**(drop * exp(-t/tau)), integrated by cumsum below
    inst = f_end * 2.0 ** (drop * np.exp(-t / sweep_tau))
    body = np.sin(2 * np.pi * np.cumsum(inst) / dsp.SAMPLE_RATE) * np.exp(-6.9078 * t / t60)
    if timbre.kind != "snare":
        return body
    freqs = dsp.rfft_freqs(dsp.fft_size(len(t)))
    rattle = dsp.shaped_noise(rng, len(t), dsp.resonance(freqs, p["snare_hz"], p["snare_hz"]))
    return 0.5 * body + rattle * np.exp(-6.9078 * t / (0.6 * t60))


# --- chirps and modulated tones -----------------------------------------------------------------

CHIRP_KINDS = ("linear", "exponential", "fm", "am")


def chirp_timbre(rng: np.random.Generator) -> Timbre:
    """Sweep range and direction, FM ratio/index or AM rate/depth, number of harmonics."""
    p = {
        "f_lo": _log_uniform(rng, 200.0, 1500.0),
        "span": rng.uniform(1.0, 3.5),  # sweep width in octaves
        "up": float(rng.random() < 0.5),
        "carrier": _log_uniform(rng, 250.0, 2500.0),
        "ratio": rng.uniform(0.5, 3.5),
        "index": rng.uniform(0.5, 6.0),
        "am_rate": _log_uniform(rng, 3.0, 40.0),
        "am_depth": rng.uniform(0.5, 1.0),
        "n_harm": float(rng.integers(1, 4)),
        "fade": rng.uniform(0.01, 0.08),
    }
    return Timbre("chirp", str(rng.choice(CHIRP_KINDS)), p)


def chirp_tone(timbre: Timbre, n: int, rng: np.random.Generator, pitch: float | None) -> np.ndarray:
    """Sum of up to three harmonics of a swept / frequency- or amplitude-modulated tone."""
    p, t = timbre.params, dsp.time_axis(n)
    shift = 2 ** rng.uniform(-0.3, 0.3)  # per-event transposition
    inst, am = instantaneous_freq(timbre, t, shift), np.ones(n)
    if timbre.kind == "am":
        am = 1.0 - p["am_depth"] * 0.5 * (1.0 + np.sin(2 * np.pi * p["am_rate"] * t))
    phase = 2 * np.pi * np.cumsum(inst) / dsp.SAMPLE_RATE
    harm = np.arange(1, int(p["n_harm"]) + 1, dtype=float)
    audible = (np.outer(harm, inst) < MAX_PARTIAL_HZ).astype(float)  # mute partials past 7.2 kHz
    x = (np.sin(np.outer(harm, phase)) * audible / harm[:, None]).sum(axis=0)
    return x * am * dsp.adsr(n, p["fade"], 0.0, 1.0, p["fade"])


def instantaneous_freq(timbre: Timbre, t: np.ndarray, shift: float) -> np.ndarray:
    """Frequency trajectory in Hz ``(n,)``: linear / exponential sweep, FM or a steady tone."""
    p = timbre.params
    u = t / max(t[-1], 1e-6)
    if not p["up"]:
        u = 1.0 - u
    lo = p["f_lo"] * shift
    hi = lo * 2 ** p["span"]
    if timbre.kind == "linear":
        return lo + (hi - lo) * u
    if timbre.kind == "exponential":
        return lo * 2 ** (p["span"] * u)
    carrier = p["carrier"] * shift
    if timbre.kind == "fm":
        mod = carrier * p["ratio"]
        return carrier + p["index"] * mod * np.cos(2 * np.pi * mod * t) * np.exp(-2.0 * t)
    return np.full_like(t, carrier)


# --- formant vowels -----------------------------------------------------------------------------


def vowel_timbre(rng: np.random.Generator) -> Timbre:
    """A 'speaker': formant scale, voice pitch, pulse shape, breathiness, spectral tilt."""
    p = {
        "formant_scale": rng.uniform(0.85, 1.25),
        "f0": _log_uniform(rng, 85.0, 280.0),
        "bw_scale": rng.uniform(0.7, 1.6),
        "breath": rng.uniform(0.0, 0.25),
        "tilt": rng.uniform(0.0, 1.5),
        "vibrato": rng.uniform(0.0, 0.02),
        "declination": rng.uniform(-0.15, 0.05),  # relative f0 change over the vowel
    }
    return Timbre("vowel", "saw" if rng.random() < 0.5 else "pulse", p)


def vowel_burst(
    timbre: Timbre, n: int, rng: np.random.Generator, pitch: float | None
) -> np.ndarray:
    """Band-limited sawtooth / pulse train through three formant resonances (parallel bank)."""
    p, t = timbre.params, dsp.time_axis(n)
    f0 = p["f0"] * 2 ** rng.normal(0.0, 0.1)
    inst = (
        f0
        * (1.0 + p["declination"] * t / max(t[-1], 1e-6))
        * (1 + p["vibrato"] * np.sin(2 * np.pi * 5.0 * t))
    )
    source = polyblep_saw(inst)
    if timbre.kind == "pulse":  # a saw minus its half-period-shifted copy is a pulse train
        source = source - polyblep_saw(inst, offset=0.35)
    freqs = dsp.rfft_freqs(dsp.fft_size(n))
    formants = VOWEL_FORMANTS[str(rng.choice(list(VOWEL_FORMANTS)))]
    resp = sum(
        g * dsp.resonance(freqs, f * p["formant_scale"], bw * p["bw_scale"])
        for f, bw, g in zip(formants, (80.0, 110.0, 160.0), (1.0, 0.6, 0.3), strict=True)
    ) * dsp.tilt(freqs, p["tilt"], f_ref=500.0)
    voiced = dsp.apply_response(source, resp)
    breath = dsp.shaped_noise(rng, n, resp) * dsp.rms(voiced)
    return (voiced + p["breath"] * breath) * dsp.adsr(n, 0.03, 0.1, 0.8, 0.08)


def polyblep_saw(inst_hz: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """Sawtooth ``(n,)`` following ``inst_hz`` ``(n,)``; PolyBLEP-smoothed jumps limit aliasing."""
    dt = inst_hz / dsp.SAMPLE_RATE
    phase = (np.cumsum(dt) + offset) % 1.0
    y = 2.0 * phase - 1.0
    a = phase / dt  # just after a wrap: phase < dt
    b = (phase - 1.0) / dt  # just before a wrap: phase > 1 - dt
    y = y - np.where(phase < dt, 2 * a - a * a - 1.0, 0.0)
    return y - np.where(phase > 1.0 - dt, b * b + 2 * b + 1.0, 0.0)


Renderer = Callable[..., np.ndarray]  # (timbre, n, rng, pitch) -> (n,)
_FAMILY_FUNCS: dict[str, tuple[Callable[[np.random.Generator], Timbre], Renderer]] = {
    "harmonic": (harmonic_timbre, harmonic_note),
    "noise": (noise_timbre, noise_texture),
    "impulse": (impulse_timbre, impulsive),
    "chirp": (chirp_timbre, chirp_tone),
    "vowel": (vowel_timbre, vowel_burst),
}
