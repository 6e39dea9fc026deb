"""Log-mel front end (spec §1), torch only.

Numbers equal ``torchaudio.transforms.MelSpectrogram`` (n_fft 400, hop 160, periodic Hann, centred
reflect padding, power 2, 80 HTK mel bins over 50-8000 Hz, no filter normalisation) followed by
``log(mel + eps)``. The filter bank is built in float32 exactly the way torchaudio builds it, which
is what makes the output bit-identical rather than merely close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InvalidAudioError

__all__ = [
    "SAMPLE_RATE",
    "FrontendConfig",
    "LogMelFrontend",
    "mel_filterbank",
    "log_mel",
    "num_frames",
]

SAMPLE_RATE = 16_000
LOG_EPS = torch.finfo(torch.float32).eps  # the release adds float32 eps (~1.19e-7) before the log


@dataclass(frozen=True)
class FrontendConfig:
    """Front-end constants; the defaults are the paper's and must not change for released models."""

    sample_rate: int = SAMPLE_RATE  # all audio is resampled to 16 kHz before the front end
    n_fft: int = 400  # 25 ms window at 16 kHz
    hop_length: int = 160  # 10 ms hop -> 100 frames per second
    n_mels: int = 80  # 80 mel bins -> 5 frequency patches of 16
    f_min: float = 50.0  # the release's lower band edge
    f_max: float = 8000.0  # Nyquist at 16 kHz

    @property
    def frames_per_second(self) -> float:
        """Log-mel frames per second of audio: 100 (a 10-ms hop)."""
        return self.sample_rate / self.hop_length


def num_frames(num_samples: int, hop_length: int = FrontendConfig.hop_length) -> int:
    """Frames produced by the centred STFT for a clip of ``num_samples`` samples."""
    return 1 + num_samples // hop_length


def _hz_to_mel_htk(freq: float) -> float:
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def _mel_to_hz_htk(mels: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)


def mel_filterbank(cfg: FrontendConfig = FrontendConfig()) -> torch.Tensor:
    """HTK triangular mel filters, shape ``(n_fft // 2 + 1, n_mels)``, built in float32.

    Mirrors torchaudio's construction step by step (float32 ``linspace`` for the FFT bin centres and
    the mel points, triangles as the min of rising and falling slopes): building it any other way
    (float64, librosa's formula) moves low-energy log-mel bins by up to ~3e-4.
    """
    n_freqs = cfg.n_fft // 2 + 1
    all_freqs = torch.linspace(0, cfg.sample_rate // 2, n_freqs)  # (201,)
    m_pts = torch.linspace(_hz_to_mel_htk(cfg.f_min), _hz_to_mel_htk(cfg.f_max), cfg.n_mels + 2)
    f_pts = _mel_to_hz_htk(m_pts)  # (82,) band edges in Hz
    f_diff = f_pts[1:] - f_pts[:-1]  # (81,)
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (201, 82)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]  # (201, 80)
    up = slopes[:, 2:] / f_diff[1:]  # (201, 80)
    return torch.max(torch.zeros(1), torch.min(down, up))


def check_waveform(waveform: torch.Tensor, sample_rate: int, what: str = "audio") -> torch.Tensor:
    """Validate a waveform batch ``(B, N)`` (or ``(N,)``) and return it as ``(B, N)`` float32."""
    if sample_rate != SAMPLE_RATE:
        raise InvalidAudioError(
            f"{what}: sample rate {sample_rate} Hz, but the model needs {SAMPLE_RATE} Hz; "
            "resample first (audiomaepp.audio.load_audio does it for files)"
        )
    if not torch.is_tensor(waveform):
        raise InvalidAudioError(f"{what}: expected a torch.Tensor, got {type(waveform).__name__}")
    if waveform.ndim == 1:
        waveform = waveform.unsqueeze(0)
    if waveform.ndim != 2:
        raise InvalidAudioError(
            f"{what}: expected shape (batch, samples) of mono audio, got {tuple(waveform.shape)}; "
            "mix multi-channel audio down to mono first"
        )
    if waveform.shape[-1] == 0 or waveform.shape[0] == 0:
        raise InvalidAudioError(f"{what}: empty audio (shape {tuple(waveform.shape)})")
    if not waveform.is_floating_point():
        raise InvalidAudioError(f"{what}: expected float samples in [-1, 1], got {waveform.dtype}")
    # in blocks: torch.isfinite builds |x| and masks as large as the input (~6 bytes per sample:
    # 200 MB for 36 minutes), then one host sync for all blocks
    blocks = waveform.reshape(-1).split(1 << 20)
    if not bool(torch.stack([torch.isfinite(b).all() for b in blocks]).all()):
        raise InvalidAudioError(f"{what}: contains NaN or infinite samples")
    return waveform.float()


class LogMelFrontend(torch.nn.Module):
    """Waveform ``(B, N)`` at 16 kHz -> log-mel ``(B, 1, T, 80)`` with ``T = 1 + N // 160``.

    A module so the window and filter bank follow ``.to(device)``; it has no trainable parameters.
    """

    def __init__(self, cfg: FrontendConfig = FrontendConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)  # periodic
        self.register_buffer("fbank", mel_filterbank(cfg), persistent=False)  # (201, 80)

    def forward(self, waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        wav = check_waveform(waveform, sample_rate)  # (B, N)
        frames = num_frames(wav.shape[-1], self.cfg.hop_length)
        if wav.shape[-1] <= self.cfg.n_fft // 2:
            # reflect padding needs more than half a window of samples: pad with silence, then
            # keep the frame count of the unpadded clip.
            wav = torch.nn.functional.pad(wav, (0, self.cfg.n_fft // 2 + 1 - wav.shape[-1]))
        padded = torch.nn.functional.pad(
            wav.unsqueeze(1), (self.cfg.n_fft // 2,) * 2, mode="reflect"
        )
        return self.frames(padded.squeeze(1))[:, :frames].unsqueeze(1)  # (B, 1, T, 80)

    def frames(self, segments: torch.Tensor) -> torch.Tensor:
        """Log-mel of already padded samples, no centring: ``(B, n_fft + hop * (T - 1))`` ->
        ``(B, T, 80)``. One STFT call for the whole batch; :meth:`forward` is this after reflect
        padding, and the embedding path feeds it equal-length 2-s segments cut from many clips."""
        with torch.autocast(device_type=segments.device.type, enabled=False):
            spec = torch.stft(
                segments.float(),
                n_fft=self.cfg.n_fft,
                hop_length=self.cfg.hop_length,
                win_length=self.cfg.n_fft,
                window=self.window,
                center=False,
                normalized=False,
                onesided=True,
                return_complex=True,
            )  # (B, 201, T)
            power = spec.abs().pow(2.0)
            mel = torch.matmul(power.transpose(-1, -2), self.fbank)  # (B, T, 80)
            return torch.log(mel + LOG_EPS)


_DEFAULT: dict[torch.device, LogMelFrontend] = {}


def log_mel(waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Functional form of :class:`LogMelFrontend` (cached per device)."""
    device = waveform.device if torch.is_tensor(waveform) else torch.device("cpu")
    if device not in _DEFAULT:
        _DEFAULT[device] = LogMelFrontend().to(device)
    return _DEFAULT[device](waveform, sample_rate)
