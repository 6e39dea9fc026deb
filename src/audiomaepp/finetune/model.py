"""The fine-tuned model: a pretrained AudioMAE encoder plus a classification head.

``AudioClassifier`` = :class:`audiomaepp.model.mae.Encoder` (weights copied exactly from an
:class:`AudioMAE`; the decoder is dropped) + :class:`ClassifierHead` on the mean of the 250 patch
tokens (MAE's ``global_pool``, with its LayerNorm) or on the cls token. A saved classifier is a
directory: ``model.safetensors`` + ``config.json`` + ``labels.json``::

    clf = AudioClassifier.from_pretrained("runs/ft/best")
    pred = clf.predict(wave, sr)        # any rate, mono or multi-channel, any length
    pred.labels, pred.top(3)            # predicted labels; [(label, score), ...]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..audio import to_mono_16k
from ..errors import CheckpointError
from ..frontend import INPUT_FRAMES, FrontendConfig
from ..model import AudioMAE, AudioMAEConfig
from ..model.io import CLASSIFIER_FORMAT, load_model_dir, save_pretrained
from ..model.mae import Encoder, encoder_flops
from ..model.spec import parse_model_spec
from .data import clip_logmel, clip_windows, stream_windows, window_starts

LABELS_NAME = "labels.json"


@dataclass
class ClassifierConfig:
    """Architecture of an :class:`AudioClassifier` (the labels live in ``labels.json``)."""

    encoder: AudioMAEConfig
    num_classes: int
    prediction_type: str = "multiclass"  # softmax + cross-entropy, or sigmoid + BCE ("multilabel")
    pooling: str = "mean"  # "mean" of patch tokens (MAE's global_pool) or "cls"
    linear_probe: bool = False  # encoder frozen (and kept in eval mode)
    drop_path: float = 0.0  # stochastic depth of the last encoder block while training

    @property
    def num_patches(self) -> int:
        """Patches per 2-s input (the trainer sizes its per-sample noise with it)."""
        return self.encoder.num_patches

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["encoder"] = self.encoder.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
        d = dict(d)
        d["encoder"] = AudioMAEConfig.from_dict(d["encoder"])
        return cls(**d)


class ClassifierHead(nn.Module):
    """``(B, D)`` pooled features -> ``(B, C)`` logits: LayerNorm (mean pooling only) + Linear."""

    def __init__(self, dim: int, num_classes: int, pooling: str, init_std: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6) if pooling == "mean" else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=init_std)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(feats))


@dataclass
class Prediction:
    """What :meth:`AudioClassifier.predict` returns for one clip."""

    labels: list[str]  # multiclass: the arg-max class; multilabel: every class scoring >= threshold
    scores: dict[
        str, float
    ]  # every class: the mean over the clip's 2-s windows of their probabilities
    segment_starts: list[float] = field(default_factory=list)  # window start times in seconds
    segment_scores: np.ndarray | None = None  # (S, C) per-window probabilities

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` highest-scoring ``(label, score)`` pairs."""
        return sorted(self.scores.items(), key=lambda kv: -kv[1])[:k]


class AudioClassifier(nn.Module):
    """Encoder + head; ``forward`` takes standardised log-mel windows ``(B, 1, 200, 80)`` -> logits."""

    def __init__(self, config: ClassifierConfig, labels: Sequence[str] | None = None) -> None:
        super().__init__()
        self.config = config
        self.labels = (
            tuple(labels)
            if labels is not None
            else tuple(str(i) for i in range(config.num_classes))
        )
        if len(self.labels) != config.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {config.num_classes} classes")
        self.encoder = Encoder(config.encoder)
        init_std = (
            0.01 if config.linear_probe else 2e-5
        )  # MAE: 0.01 for linear probing, 2e-5 fine-tuning
        self.head = ClassifierHead(
            config.encoder.embed_dim, config.num_classes, config.pooling, init_std
        )
        if config.linear_probe:
            self.encoder.requires_grad_(False)
        self._drop_noise: torch.Tensor | None = (
            None  # (B, >= depth) uniforms of the current forward
        )
        self._hooks = [
            self.encoder.blocks[i].register_forward_hook(self._drop_path_hook(i, rate))
            for i, rate in enumerate(self._drop_rates())
        ]

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_encoder(
        cls,
        mae: AudioMAE,
        labels: Sequence[str],
        prediction_type: str,
        pooling: str = "mean",
        linear_probe: bool = False,
        drop_path: float = 0.0,
    ) -> AudioClassifier:
        """A new head on ``mae``'s encoder; the encoder weights are copied exactly (strict)."""
        cfg = ClassifierConfig(
            mae.config, len(labels), prediction_type, pooling, linear_probe, drop_path
        )
        clf = cls(cfg, labels)
        clf.encoder.load_state_dict(mae.encoder.state_dict(), strict=True)
        return clf.to(next(mae.parameters()).device)

    def _drop_rates(self) -> list[float]:
        """Stochastic depth rising linearly to ``drop_path`` at the last block (timm / MAE)."""
        depth = self.config.encoder.depth
        if self.config.linear_probe or depth == 0:
            return [0.0] * depth
        return [self.config.drop_path * i / max(depth - 1, 1) for i in range(depth)]

    def _drop_path_hook(self, index: int, rate: float):
        """Per-sample stochastic depth on a whole block: ``x + keep / (1 - rate) * (block(x) - x)``.

        A forward hook (not a wrapper module), so the encoder's parameter names stay those of the
        pretrained checkpoint. Active in training mode only. Sample ``b`` keeps block ``index`` when
        ``noise[b, index] >= rate``: the trainer passes its per-step noise (a function of seed and
        step), so a resumed run drops exactly the blocks the uninterrupted run dropped; without
        noise the global torch RNG is used.
        """

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if not module.training or rate <= 0.0:
                return output
            x = args[0]
            noise = self._drop_noise
            u = noise[:, index] if noise is not None else torch.rand(x.shape[0], device=x.device)
            keep = (u >= rate).to(x.dtype)[:, None, None] / (1.0 - rate)
            return x + (output - x) * keep

        return hook

    # ---- forward --------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> AudioClassifier:
        super().train(mode)
        if self.config.linear_probe:
            self.encoder.eval()  # a frozen encoder stays deterministic (no drop path)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``(B, D)`` of log-mel windows ``(B, 1, 200, 80)``."""
        want = (self.config.encoder.in_chans, *self.config.encoder.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"AudioClassifier expects (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}"
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.linear_probe):
            tokens = self.encoder.run(self.encoder.embed(x))  # (B, 1 + L, D)
        return tokens[:, 1:].mean(dim=1) if self.config.pooling == "mean" else tokens[:, 0]

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, C)``; ``noise`` ``(B, >= depth)`` uniforms drive drop path when training."""
        if noise is not None and noise.shape[1] < len(self.encoder.blocks):
            raise ValueError(
                f"drop-path noise needs >= {len(self.encoder.blocks)} columns, got {noise.shape[1]}"
            )
        self._drop_noise = noise
        try:
            return self.head(self.features(x))
        finally:
            self._drop_noise = None

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax (multiclass) or sigmoid (multilabel) of logits ``(B, C)``."""
        return (
            logits.softmax(dim=-1)
            if self.config.prediction_type == "multiclass"
            else logits.sigmoid()
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- prediction -------------------------------------------------------------------------------
    @torch.no_grad()
    def window_scores(
        self, windows: Sequence[torch.Tensor], batch_size: int = 64, dtype: str | None = None
    ) -> list[np.ndarray]:
        """Per-window probabilities ``(S_i, C)`` for each clip's windows ``(S_i, 1, 200, 80)``.

        Windows of all clips share batches of ``batch_size`` (many short clips keep a GPU busy).
        ``dtype``: None runs the modules as they are (training's validation); ``auto`` or a
        precision runs the encoder as ``embed`` does (:mod:`audiomaepp.embedding.precision`).
        """
        was_training = self.training
        self.eval()
        try:
            counts = [w.shape[0] for w in windows]
            if not counts:
                return []
            flat = torch.cat(list(windows))
            logits = self._logits_fn(dtype, batch_size)
            probs = torch.cat(
                [
                    self.probabilities(logits(flat[i : i + batch_size].to(self.device))).cpu()
                    for i in range(0, flat.shape[0], batch_size)
                ]
            )
            return [p.numpy().astype(np.float64) for p in probs.split(counts)]
        finally:
            self.train(was_training)

    def precision(self, dtype: str = "auto") -> str:
        """The encoder precision ``dtype`` resolves to on this model's device."""
        from ..embedding.precision import resolve_precision

        return resolve_precision(dtype, self.device)

    def _logits_fn(self, dtype: str | None, batch_size: int):
        """Windows -> float32 logits: the modules, or the inference encoder in a precision (built
        once per precision and device, on the weights as they are then)."""
        if dtype is None:
            return lambda x: self(x).float()
        from ..embedding.cpu_encoder import chunk_encoder

        key = (self.precision(dtype), self.device, batch_size)
        cached = getattr(self, "_inference", None)
        if cached is None or cached[0] != key:
            cached = (key, chunk_encoder(self.encoder, key[0], batch_size))
            self._inference = cached
        encode = cached[1]

        def logits(x: torch.Tensor) -> torch.Tensor:
            tokens = encode(x).float()  # (B, 1 + L, D)
            pooled = tokens[:, 1:].mean(dim=1) if self.config.pooling == "mean" else tokens[:, 0]
            return self.head(pooled).float()

        return logits

    def prediction(
        self, segment_scores: np.ndarray, frames: int, threshold: float = 0.5
    ) -> Prediction:
        """A :class:`Prediction` from a clip's per-window scores ``(S, C)``."""
        clip = segment_scores.mean(axis=0)
        if self.config.prediction_type == "multiclass":
            labels = [self.labels[int(clip.argmax())]]
        else:
            labels = [lab for lab, s in zip(self.labels, clip, strict=True) if s >= threshold]
        fps = FrontendConfig().frames_per_second
        starts = [s / fps for s in window_starts(max(frames, 1))]
        return Prediction(
            labels,
            {lab: float(s) for lab, s in zip(self.labels, clip, strict=True)},
            starts,
            segment_scores,
        )

    def predict(
        self,
        wave: np.ndarray | torch.Tensor,
        sr: int,
        threshold: float = 0.5,
        dtype: str = "auto",
        batch_size: int = 64,
    ) -> Prediction:
        """Labels and scores of one clip: ``(N,)``, ``(N, C)`` or ``(C, N)`` (C <= 8) at rate ``sr``.

        ``dtype``: the encoder's precision (``auto``: bf16 on CUDA and on CPUs with native bf16
        matmul, else float32). A clip longer than ``batch_size`` windows is streamed
        (:func:`~audiomaepp.finetune.data.stream_windows`): memory does not grow with its length.
        """
        audio = wave.detach().cpu().numpy() if torch.is_tensor(wave) else np.asarray(wave)
        if audio.ndim == 2 and audio.shape[0] <= 8 < audio.shape[1]:
            audio = audio.T  # (channels, samples) as torchaudio gives -> (samples, channels)
        mono = to_mono_16k(audio, sr)
        if len(mono) > batch_size * INPUT_FRAMES * FrontendConfig().hop_length:  # > 1 batch
            from ..embedding.stream import ArraySource

            return self.predict_stream(ArraySource(mono), threshold, dtype, batch_size)
        lms = clip_logmel(mono)
        scores = self.window_scores([clip_windows(lms)], batch_size, dtype)[0]
        return self.prediction(scores, lms.shape[0], threshold)

    def predict_stream(
        self, source, threshold: float = 0.5, dtype: str = "auto", batch_size: int = 64
    ) -> Prediction:
        """:meth:`predict` for a :class:`~audiomaepp.embedding.stream.SampleSource` (an array, or a
        file read block by block), in memory that does not grow with its length."""
        parts, clip_frames = [], 0
        for windows, frames in stream_windows(source, batch_size):
            parts += self.window_scores([windows], batch_size, dtype)
            clip_frames = frames
        return self.prediction(np.concatenate(parts), clip_frames, threshold)

    # ---- bookkeeping ---------------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_sample(self) -> float:
        """Training FLOPs per 2-s input: forward + backward matmuls (forward only through a frozen encoder)."""
        fwd = encoder_flops(self.config.encoder)
        return float(fwd if self.config.linear_probe else 3 * fwd)

    # ---- persistence -------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """``model.safetensors`` + ``config.json`` + ``labels.json`` in ``directory``."""
        return save_pretrained(
            self, directory, extra_json={LABELS_NAME: list(self.labels)}, fmt=CLASSIFIER_FORMAT
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> AudioClassifier:
        """A classifier directory written by :meth:`save_pretrained`, or a Hub repo id holding one
        (model.io's one reader: format tag, header checked before allocating; never executes code)."""

        def build(config: dict[str, Any], folder: Path) -> AudioClassifier:
            return cls(ClassifierConfig.from_dict(config), read_labels(folder))

        return load_model_dir(directory, build, CLASSIFIER_FORMAT, device)


def read_labels(directory: Path) -> list[str]:
    """The class names in a classifier directory's ``labels.json``."""
    path = directory / LABELS_NAME
    try:
        labels = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a classifier's label list ({exc})") from exc
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise CheckpointError(f"{path}: expected a JSON list of class names")
    return labels


def build_classifier(
    model: str,
    labels: Sequence[str],
    prediction_type: str,
    *,
    pooling: str = "mean",
    linear_probe: bool = False,
    drop_path: float = 0.0,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> AudioClassifier:
    """``model``: a model spec (:func:`~audiomaepp.model.spec.parse_model_spec`): a model directory
    (``save_pretrained`` / ``convert-release`` output), a Hub repo id, or ``random:<preset>`` (a
    random-init encoder, seeded, the 'no pretraining' baseline).

    The head is initialised from ``seed`` after the encoder, so the same seed gives the same model.
    """
    spec = parse_model_spec(model)
    if spec.kind == "random":
        torch.manual_seed(seed)  # the encoder's init, as Embedder.random_init makes it
        mae = AudioMAE(AudioMAEConfig.preset(spec.target, **(overrides or {})))
    else:  # a folder or a Hub repo id
        mae = AudioMAE.from_pretrained(spec.target)
    torch.manual_seed(seed)  # the head's init depends on the seed and the encoder's shape only
    return AudioClassifier.from_encoder(
        mae, labels, prediction_type, pooling, linear_probe, drop_path
    )
