"""Small numpy DSP helpers for the synthesiser: FFT-domain filters, noise colours, envelopes.

Everything is vectorised numpy (no per-sample Python loops, no scipy): filters are applied as a
magnitude response on an ``rfft`` grid, which is exact for the stationary sources we filter
(noise, pulse trains) and lets a whole event be processed in one call. All signals are ``(n,)``
float64 arrays at ``SAMPLE_RATE``; conversion to float32 happens once, when a clip is finished.
"""

from __future__ import annotations

import numpy as np

# Equals ``audiomaepp.frontend.SAMPLE_RATE`` (a test checks); repeated so synth never imports torch
SAMPLE_RATE = 16_000


def fft_size(n: int) -> int:
    """Next power of two >= ``n``: pocketfft is fastest there, and padding is cropped away after."""
    return 1 << max(int(n) - 1, 1).bit_length()


def rfft_freqs(n_fft: int) -> np.ndarray:
    """Bin frequencies (Hz) of an ``rfft`` of length ``n_fft``, shape ``(n_fft // 2 + 1,)``."""
    return np.fft.rfftfreq(n_fft, d=1.0 / SAMPLE_RATE)


def apply_response(x: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Filter ``x`` ``(n,)`` by a real magnitude ``response`` on ``rfft_freqs(fft_size(n))``.

    Zero-phase and circular; the input is zero-padded to the FFT size so short wrap-around tails
    land in the padding rather than on top of the signal's start.
    """
    n_fft = fft_size(len(x))
    spec = np.fft.rfft(x, n_fft) * response
    return np.fft.irfft(spec, n_fft)[: len(x)]


def resonance(freqs: np.ndarray, centre: float, bandwidth: float) -> np.ndarray:
    """Magnitude of a two-pole band-pass (peak 1 at ``centre``, -3 dB width ``bandwidth`` Hz).

    The classic resonator shape ``1 / sqrt(1 + ((f^2 - fc^2) / (f * bw))^2)``: it falls off like
    ``f`` below the peak and ``1/f`` above, which is what makes formants and modes sound natural.
    """
    f = np.maximum(freqs, 1.0)
    q = (f * f - centre * centre) / (f * bandwidth)
    return 1.0 / np.sqrt(1.0 + q * q)


def tilt(freqs: np.ndarray, alpha: float, f_ref: float = 100.0) -> np.ndarray:
    """Power-law magnitude ``(f / f_ref) ** (-alpha / 2)``: power spectrum ~ ``1 / f**alpha``.

    ``alpha`` 0 is white, 1 pink, 2 brown; negative values tilt towards the highs (blue/violet).
    Frequencies below 20 Hz are clamped so DC does not blow up.
    """
    return (np.maximum(freqs, 20.0) / f_ref) ** (-alpha / 2.0)


def shaped_noise(
    rng: np.random.Generator, n: int, response: np.ndarray | None = None
) -> np.ndarray:
    """Gaussian noise of ``n`` samples shaped by ``response`` on ``rfft_freqs(fft_size(n))``.

    Drawn directly in the frequency domain (complex Gaussian bins), so colouring costs one
    inverse FFT. Returned with unit RMS, shape ``(n,)``.
    """
    n_fft = fft_size(n)
    bins = n_fft // 2 + 1
    spec = rng.standard_normal(bins) + 1j * rng.standard_normal(bins)
    if response is not None:
        spec = spec * response
    spec[0] = 0.0  # no DC offset
    x = np.fft.irfft(spec, n_fft)[:n]
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def time_axis(n: int) -> np.ndarray:
    """Sample times in seconds, shape ``(n,)``."""
    return np.arange(n) / SAMPLE_RATE


def sin_turns(cycles: np.ndarray) -> np.ndarray:
    """``sin(2 pi cycles)`` for phases given in turns, any shape, returned as float32.

    The whole turns are removed in float64 first, so the float32 sine only sees [0, 1) and stays
    accurate to ~1e-7 however long the note; float32 ``np.sin`` is several times faster, which
    matters for the ``(partials, samples)`` arrays of additive synthesis.
    """
    frac = (cycles - np.floor(cycles)).astype(np.float32)
    frac *= np.float32(2 * np.pi)
    return np.sin(frac, out=frac)


def adsr(n: int, attack: float, decay: float, sustain: float, release: float) -> np.ndarray:
    """Piecewise-linear ADSR envelope over ``n`` samples (times in seconds), shape ``(n,)``.

    Attack/decay/release are scaled down proportionally when the note is shorter than their sum,
    so every note reaches silence at its end.
    """
    dur = n / SAMPLE_RATE
    total = attack + decay + release
    scale = min(1.0, 0.95 * dur / total) if total > 0 else 1.0
    a, d, r = attack * scale, decay * scale, release * scale
    knots_t = [0.0, a, a + d, max(dur - r, a + d), dur]
    knots_v = [0.0, 1.0, sustain, sustain, 0.0]
    return np.interp(time_axis(n), knots_t, knots_v)


def swell(n: int, peak_pos: float, curve: float) -> np.ndarray:
    """Slow crescendo-decrescendo: ``sin(pi * u) ** curve`` warped so the peak sits at ``peak_pos``.

    ``peak_pos`` in (0, 1) is the fraction of the note where the swell peaks; ``curve`` > 1 makes
    it more pointed. Shape ``(n,)``.
    """
    u = np.linspace(0.0, 1.0, n)
    warp = u ** (np.log(0.5) / np.log(peak_pos))  # maps peak_pos -> 0.5
    return np.sin(np.pi * warp) ** curve


def fade_edges(x: np.ndarray, seconds: float = 0.003) -> np.ndarray:
    """Raised-cosine fade in/out of ``seconds`` so event boundaries never click."""
    k = min(int(seconds * SAMPLE_RATE), len(x) // 2)
    if k < 2:
        return x
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, k))
    y = x.copy()
    y[:k] *= ramp
    y[-k:] *= ramp[::-1]
    return y


def rms(x: np.ndarray) -> float:
    """Root-mean-square level of ``x`` (0 for silence)."""
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def normalise_peak(x: np.ndarray, peak: float) -> np.ndarray:
    """Scale ``x`` so ``max |x| == peak``; all-zero or non-finite input gives silence, never NaN."""
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(np.max(np.abs(x))) if x.size else 0.0
    return x * (peak / top) if top > 0 else np.zeros_like(x)
