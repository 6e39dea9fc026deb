"""How far our log-mel is from the release's reference arrays, per device and FFT library.

Also computes torchaudio's ``MelSpectrogram`` when torchaudio is importable (it is not a
dependency), to tell apart our front end from the FFT backend that produced the reference.

    python -m benchmarks.frontend_parity \\
        --reference ../shared/conformance/official_tiny64/reference.npz
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from audiomaepp.frontend import log_mel
from audiomaepp.frontend.logmel import LOG_EPS

from .common import device_info, write_result


def _torchaudio_logmel(audio: torch.Tensor) -> torch.Tensor | None:
    try:
        import torchaudio
    except Exception:
        return None
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000,
        n_fft=400,
        win_length=400,
        hop_length=160,
        f_min=50.0,
        f_max=8000.0,
        n_mels=80,
        window_fn=torch.hann_window,
        power=2.0,
        center=True,
        pad_mode="reflect",
        norm=None,
        mel_scale="htk",
    ).to(audio.device)
    return torch.log(mel(audio) + LOG_EPS)  # (B, 80, T)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reference", required=True)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    ref = np.load(args.reference)
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        audio = torch.from_numpy(ref["hear0_audio"]).to(dev)
        ours = log_mel(audio)[:, 0].transpose(1, 2).cpu().numpy()
        err = np.abs(ours - ref["hear0_logmel_raw"])
        rows.append(
            {
                "impl": "audiomaepp",
                "device": dev,
                "max_abs": float(err.max()),
                "frac_over_1e-4": float((err > 1e-4).mean()),
            }
        )
        ta = _torchaudio_logmel(audio)
        if ta is not None:
            err = np.abs(ta.cpu().numpy() - ref["hear0_logmel_raw"])
            rows.append(
                {
                    "impl": "torchaudio",
                    "device": dev,
                    "max_abs": float(err.max()),
                    "frac_over_1e-4": float((err > 1e-4).mean()),
                }
            )
    for r in rows:
        print(r)
    dev = torch.device(devices[-1])
    write_result(
        f"frontend_parity_{dev.type}", {"env": device_info(dev), "results": rows}, args.out
    )
    return {"results": rows}


if __name__ == "__main__":
    main()
