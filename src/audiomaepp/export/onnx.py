"""ONNX export of the whole feature extractor: waveform in, scene and timestamp embeddings out.

The graph takes ``waveform`` ``(batch, samples)`` float32 at 16 kHz (both axes dynamic; at least
401 samples, 25 ms) and returns ``scene`` ``(batch, 5 D)``, ``embeddings`` ``(batch, steps, 5 D)``
and ``timestamps`` ``(batch, steps)`` in ms: the same numbers as
:class:`~audiomaepp.embedding.Embedder` (front end, per-clip standardisation, chunking, token
layout, trimming) for clips of equal length.

The STFT is a strided convolution with a float64-built windowed DFT basis: ONNX Runtime's own
``STFT`` operator is ~100x less accurate (log-mel errors ~4e-3 against torch's FFT; this basis:
~4e-5 in both torch and ONNX Runtime). Needs the ``[onnx]`` extra (onnx, onnxscript; onnxruntime
to run it).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from ..embedding import Embedder
from ..embedding.layout import CHUNK_FRAMES
from ..frontend import STD_EPS
from ..frontend.logmel import LOG_EPS

__all__ = [
    "WaveformEmbedder",
    "export_onnx",
    "check_onnx",
    "export_encoder_onnx",
    "use_onnxruntime",
    "MIN_SAMPLES",
]

MIN_SAMPLES = 401  # reflect padding needs more than half a window (the Embedder pads shorter clips)
OPSET = 18  # STFT-free graph; 18 is what the dynamo exporter targets well


def dft_basis(n_fft: int, window: torch.Tensor) -> torch.Tensor:
    """Windowed real DFT as conv weights ``(2 * (n_fft // 2 + 1), 1, n_fft)``: cos rows, then
    -sin."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft
    win = window.to(torch.float64)
    return torch.cat([torch.cos(angle) * win, -torch.sin(angle) * win]).float().unsqueeze(1)


class WaveformEmbedder(nn.Module):
    """The exportable form of an :class:`Embedder`: ``(B, N)`` -> scene, embeddings, timestamps."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        cfg = embedder.frontend.cfg
        self.n_fft, self.hop = cfg.n_fft, cfg.hop_length
        self.layout = embedder.layout
        self.num_bands = embedder.num_bands
        self.steps_per_chunk = embedder.steps_per_chunk
        self.encoder = embedder.encoder
        self.register_buffer(
            "basis", dft_basis(cfg.n_fft, embedder.frontend.window.cpu()), persistent=False
        )
        self.register_buffer("fbank", embedder.frontend.fbank.cpu().clone(), persistent=False)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` -> ``(B, T, 80)``, ``T = 1 + N // 160`` (centred, reflect padding)."""
        padded = nn.functional.pad(
            wav.unsqueeze(1), (self.n_fft // 2, self.n_fft // 2), mode="reflect"
        )
        spec = nn.functional.conv1d(padded, self.basis, stride=self.hop)  # (B, 2 * 201, T)
        bins = self.n_fft // 2 + 1
        power = spec[:, :bins].pow(2) + spec[:, bins:].pow(2)  # (B, 201, T)
        return torch.log(torch.matmul(power.transpose(1, 2), self.fbank) + LOG_EPS)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N = waveform.shape
        lms = self.log_mel(waveform)  # (B, T, 80)
        frames = N // self.hop + 1
        mean = lms.mean(dim=(1, 2), keepdim=True)
        std = lms.std(dim=(1, 2), keepdim=True, unbiased=True)
        lms = (lms - mean) / (std + STD_EPS)
        if self.layout == "release":  # a whole extra chunk when already a multiple (spec §7)
            pad = CHUNK_FRAMES - frames % CHUNK_FRAMES
        else:
            pad = (CHUNK_FRAMES - frames % CHUNK_FRAMES) % CHUNK_FRAMES
        lms = nn.functional.pad(lms, (0, 0, 0, pad))
        chunks = (frames + pad) // CHUNK_FRAMES
        tokens = self.encoder(lms.reshape(B * chunks, 1, CHUNK_FRAMES, lms.shape[-1]))[
            :, 1:
        ]  # (B C, 250, D)
        D = tokens.shape[-1]
        steps_all = self.steps_per_chunk
        if self.layout == "release":  # 'b (f t) d -> b t (f d)' on a time-major sequence
            steps = tokens.reshape(B * chunks, self.num_bands, steps_all, D).permute(0, 2, 1, 3)
        else:
            steps = tokens.reshape(B * chunks, steps_all, self.num_bands, D)
        steps = steps.reshape(B, chunks * steps_all, self.num_bands * D)
        keep, stamps = self._kept_steps(N, frames)
        emb = steps[:, :keep]
        return emb.mean(dim=1), emb, stamps.unsqueeze(0).expand(B, -1)

    def _kept_steps(self, N, frames) -> tuple:
        """Steps that hold real audio and their times in ms: :func:`plan_chunks` in integer form
        (symbolic in ``N`` for the exporter)."""
        frames_per_step = CHUNK_FRAMES // self.steps_per_chunk  # 4 frames = 40 ms
        # the release's C * 50 - int(50 * pad / 200) equals ceil(frames / 4), as chunks hold
        # frames + pad = 200 C frames; written without a negative floor division, which the
        # exported graph gets wrong (ONNX integer division truncates toward zero)
        by_frames = (frames + frames_per_step - 1) // frames_per_step
        if self.layout == "release":
            keep = by_frames
            stamps = torch.arange(keep, dtype=torch.float32) * (N / 16.0) / keep
        else:
            by_time = (
                N - 240
            ) // 640 + 1  # steps whose centre (15 ms + 40 ms i) is inside the clip
            keep = torch.sym_max(1, torch.sym_min(by_frames, by_time))
            centre = (frames_per_step - 1) / 2 * 10.0
            stamps = torch.arange(keep, dtype=torch.float32) * (frames_per_step * 10.0) + centre
        return keep, stamps


def export_onnx(embedder: Embedder, out: str | Path, example_seconds: float = 3.0) -> Path:
    """Export ``embedder`` (on any device; exported from the CPU in float32) to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = WaveformEmbedder(embedder).to("cpu").float().eval()
    example = torch.randn(2, int(16000 * example_seconds)) * 0.1
    batch = torch.export.Dim("batch", min=1, max=4096)
    samples = torch.export.Dim("samples", min=MIN_SAMPLES, max=16000 * 3600 * 4)
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(out),
            dynamo=True,
            opset_version=OPSET,
            input_names=["waveform"],
            output_names=["scene", "embeddings", "timestamps"],
            dynamic_shapes={"waveform": {0: batch, 1: samples}},
        )
    return out


def check_onnx(
    embedder: Embedder, path: str | Path, seconds: tuple[float, ...] = (1.0, 4.3)
) -> float:
    """Run the exported graph with onnxruntime (CPU) on noise clips of the given lengths (batch 2)
    and return the largest absolute difference from the embedder's own outputs."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    for sec in seconds:
        wav = torch.randn(2, int(16000 * sec), generator=gen) * 0.1
        scene, emb, stamps = session.run(None, {"waveform": wav.numpy()})
        ref_emb, ref_stamps = embedder.timestamp_embeddings(wav.to(embedder.device))
        ref_scene = embedder.scene_embeddings(wav.to(embedder.device))
        if emb.shape != tuple(ref_emb.shape):
            raise RuntimeError(
                f"{path}: {sec} s gives embeddings {emb.shape}, PyTorch {tuple(ref_emb.shape)}"
            )
        for got, ref in ((scene, ref_scene), (emb, ref_emb)):
            worst = max(worst, float(np.abs(got - ref.cpu().numpy()).max()))
        if not np.allclose(stamps, ref_stamps.cpu().numpy(), rtol=0, atol=1e-2):  # ms
            raise RuntimeError(f"{path}: timestamps differ from PyTorch's for a {sec} s clip")
    return worst


# ---- ONNX Runtime as the encoder backend of an Embedder ------------------------------------------
def export_encoder_onnx(embedder: Embedder, out: str | Path) -> Path:
    """Export the encoder alone: ``chunks`` ``(batch, 1, 200, 80)`` -> ``tokens`` ``(batch, 1 + L,
    D)`` float32 (batch dynamic). The :class:`Embedder` keeps its own front end and batching."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    encoder = copy.deepcopy(embedder.encoder).to("cpu").float().eval()
    frames, mels = embedder.config.img_size
    example = torch.randn(2, embedder.config.in_chans, frames, mels)
    with torch.no_grad():
        torch.onnx.export(
            encoder,
            (example,),
            str(out),
            dynamo=True,
            opset_version=OPSET,
            input_names=["chunks"],
            output_names=["tokens"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}},
        )
    return out


def use_onnxruntime(
    embedder: Embedder, precision: str = "float32", workdir: str | Path | None = None
) -> Path:
    """Make ``embedder`` run its encoder in ONNX Runtime (CPU): ``float32``, or ``int8`` (ONNX
    Runtime's dynamic quantisation of the MatMuls, per-channel weights). Returns the model file
    (in ``workdir``, default a temporary folder kept for the life of the process)."""
    import tempfile

    import onnxruntime as ort

    if precision not in ("float32", "int8"):
        raise ValueError(f"onnxruntime backend: precision float32 or int8, got {precision!r}")
    folder = Path(workdir or tempfile.mkdtemp(prefix="audiomaepp-ort-"))
    path = export_encoder_onnx(embedder, folder / "encoder.onnx")
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = folder / "encoder.int8.onnx"
        quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8, per_channel=True)
        path = quantized
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same cores torch would use
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def encode(chunks: torch.Tensor) -> torch.Tensor:
        arr = chunks.detach().to("cpu", torch.float32).contiguous().numpy()
        (tokens,) = session.run(["tokens"], {"chunks": arr})
        return torch.from_numpy(tokens).to(chunks.device)

    embedder.use_backend("onnxruntime", precision, encode)
    return path
