"""Front end: parity with the release's torchaudio log-mel, standardisation, crops, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audiomaepp.errors import InvalidAudioError
from audiomaepp.frontend import (
    LogMelFrontend,
    crop_or_tile,
    log_mel,
    mel_filterbank,
    num_frames,
    standardize,
    tile_to,
)


def test_filterbank_shape_and_band_edges():
    fb = mel_filterbank()
    assert fb.shape == (201, 80) and fb.dtype == torch.float32
    assert float(fb.min()) == 0.0
    assert fb[:2].sum() == 0  # 0 and 40 Hz lie below f_min = 50 Hz
    assert (fb.sum(0) > 0).all()  # every filter catches at least one FFT bin


def test_logmel_matches_release_pretraining_input(reference):
    """``lms`` is the first 200 frames of the clip's log-mel, standardised with the unbiased std."""
    lms = log_mel(torch.from_numpy(reference["lms_audio"]))
    assert lms.shape == (2, 1, 251, 80)
    ours = standardize(lms[:, :, :200], unbiased=True).numpy()
    assert np.abs(ours - reference["lms"]).max() < 1e-4


def test_logmel_matches_release_hear_features(reference):
    raw = log_mel(torch.from_numpy(reference["hear0_audio"]))  # (2, 1, 531, 80)
    assert raw.shape == (2, 1, 531, 80)
    err_raw = np.abs(raw[:, 0].transpose(1, 2).numpy() - reference["hear0_logmel_raw"])
    err_std = np.abs(standardize(raw, unbiased=True).numpy() - reference["hear0_logmel"])
    # All but a handful of near-silent bins (mel energy ~1e-6, where float32 FFT rounding of the
    # library that made the reference dominates) agree to 1e-5; none is off by more than 5e-4.
    for err in (err_raw, err_std):
        assert np.mean(err < 1e-4) > 0.9999
        assert np.median(err) < 1e-6
        assert err.max() < 5e-4


def test_frame_count_and_short_clips():
    for n in (1, 100, 200, 201, 400, 16000, 32000):
        out = log_mel(torch.zeros(1, n) + 0.01 * torch.randn(1, n))
        assert out.shape == (1, 1, num_frames(n), 80)
        assert torch.isfinite(out).all()


def test_batched_equals_single():
    wav = torch.randn(3, 8000) * 0.1
    batched = log_mel(wav)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], log_mel(wav[i]), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "wav, rate, message",
    [
        (torch.zeros(1, 16000), 44100, "sample rate 44100"),
        (torch.tensor([[0.1, float("nan"), 0.2] * 200]), 16000, "NaN"),
        (torch.tensor([[0.1, float("inf")] * 300]), 16000, "NaN or infinite"),
        (torch.zeros(1, 0), 16000, "empty"),
        (torch.zeros(2, 2, 1000), 16000, "mono"),
        (torch.zeros(1, 1000, dtype=torch.int16), 16000, "float"),
    ],
)
def test_bad_audio_is_refused_clearly(wav, rate, message):
    with pytest.raises(InvalidAudioError, match=message):
        LogMelFrontend()(wav, sample_rate=rate)


def test_standardize_population_vs_unbiased():
    x = torch.randn(2, 1, 300, 80) * 3 + 5
    pop = standardize(x, unbiased=False)
    assert pop.mean(dim=(1, 2, 3)).abs().max() < 1e-5
    assert (pop.std(dim=(1, 2, 3), unbiased=False) - 1).abs().max() < 1e-5
    unb = standardize(x, unbiased=True)
    assert (unb.std(dim=(1, 2, 3), unbiased=True) - 1).abs().max() < 1e-5
    assert not torch.allclose(pop, unb)


def test_tile_and_crop():
    short = torch.arange(70 * 80, dtype=torch.float32).reshape(70, 80)
    tiled = tile_to(short, 200)
    assert tiled.shape == (200, 80)
    torch.testing.assert_close(tiled[70:140], short)
    torch.testing.assert_close(tiled[140:200], short[:60])
    long = torch.arange(500 * 80, dtype=torch.float32).reshape(500, 80)
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(20):
        crop = crop_or_tile(long, 200, g)
        assert crop.shape == (200, 80)
        start = int(crop[0, 0]) // 80
        torch.testing.assert_close(crop, long[start : start + 200])
        starts.add(start)
    assert len(starts) > 5  # crops really are random
    with pytest.raises(ValueError, match="empty"):
        tile_to(torch.zeros(0, 80))
