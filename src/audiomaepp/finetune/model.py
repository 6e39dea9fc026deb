"""The fine-tuned model: a pretrained AudioMAE encoder plus a classification head.

``AudioClassifier`` = :class:`audiomaepp.model.mae.Encoder` (weights copied exactly from an
:class:`AudioMAE`; the decoder is dropped) + :class:`ClassifierHead` on pooled tokens:

* ``bands``: the 250 patch tokens grouped into 50 steps of 5 bands by the model's token layout
  and averaged over the steps, ``(B, 5 D)`` -- for a 2-s input exactly the scene embedding the
  MLP probe sees (spec §7: band means for ``time_major``, the release's grouping for ``release``);
* ``mean``: the mean of the patch tokens, ``(B, D)`` (MAE's ``global_pool``);
* ``cls``: the cls token, ``(B, D)``.

The head is ``linear`` (LayerNorm + Linear; no LayerNorm on ``cls``, which the encoder's final
norm already normalised) or ``mlp``, the probe's ``Linear -> BatchNorm1d -> Dropout -> ReLU ->
Linear`` with its xavier-normal init (:func:`audiomaepp.evaluation.probe.init_weights`). A saved
classifier is a directory: ``model.safetensors`` + ``config.json`` + ``labels.json``::

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
from ..embedding.layout import group_tokens
from ..errors import CheckpointError
from ..evaluation.probe import init_weights
from ..frontend import INPUT_FRAMES, FrontendConfig
from ..model import AudioMAE, AudioMAEConfig
from ..model.io import CLASSIFIER_FORMAT, load_model_dir, save_pretrained
from ..model.mae import Encoder, encoder_flops
from ..model.spec import parse_model_spec
from .data import clip_logmel, clip_windows, stream_windows, window_starts

POOLINGS = ("bands", "mean", "cls")
HEADS = ("linear", "mlp")
LABELS_NAME = "labels.json"


@dataclass
class ClassifierConfig:
    """Architecture of an :class:`AudioClassifier` (the labels live in ``labels.json``)."""

    encoder: AudioMAEConfig
    num_classes: int
    prediction_type: str = "multiclass"  # softmax + cross-entropy, or sigmoid + BCE ("multilabel")
    pooling: str = "mean"  # "bands", "mean" or "cls" (module docstring); mean: what old files hold
    linear_probe: bool = False  # encoder frozen (and kept in eval mode)
    drop_path: float = 0.0  # stochastic depth of the last encoder block while training
    head: str = "linear"  # "linear" or "mlp" (the probe's); linear: what old files hold
    head_hidden: int = 1024  # mlp: hidden units (the probe's hidden_dim)
    head_dropout: float = 0.1  # mlp: dropout after the BatchNorm (the probe grid's 0.1)
    head_init_std: float | None = None  # linear: weight std; None: 0.01 frozen, 2e-5 else (MAE)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"ClassifierConfig.pooling={self.pooling!r}; choose from {POOLINGS}")
        if self.head not in HEADS:
            raise ValueError(f"ClassifierConfig.head={self.head!r}; choose from {HEADS}")

    @property
    def feature_dim(self) -> int:
        """Width of the pooled features the head sees: ``5 D`` for ``bands``, else ``D``."""
        d = self.encoder.embed_dim
        return d * self.encoder.grid_size[1] if self.pooling == "bands" else d

    @property
    def num_patches(self) -> int:
        """Columns of the trainer's per-sample noise ``(B, num_patches)``: ``depth`` for drop
        path, then ``head_hidden`` for the MLP head's dropout (at least the 250 patches)."""
        used = self.encoder.depth + (self.head_hidden if self.head == "mlp" else 0)
        return max(self.encoder.num_patches, used)

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
    """``(B, F)`` pooled features -> ``(B, C)`` logits.

    ``linear``: LayerNorm (not on ``cls``) + Linear, weight ``N(0, init_std)`` truncated, bias 0
    (MAE). ``mlp``: the probe's Linear-BatchNorm-Dropout-ReLU-Linear, initialised as the probe
    initialises it from a generator seeded with ``seed``.
    """

    def __init__(self, cfg: ClassifierConfig, seed: int = 0) -> None:
        super().__init__()
        dim, num_classes = cfg.feature_dim, cfg.num_classes
        self.kind = cfg.head
        if cfg.head == "linear":
            self.norm = nn.LayerNorm(dim, eps=1e-6) if cfg.pooling != "cls" else nn.Identity()
            self.fc = nn.Linear(dim, num_classes)
            std = cfg.head_init_std
            if std is None:
                std = 0.01 if cfg.linear_probe else 2e-5  # MAE: linear probing / fine-tuning
            nn.init.trunc_normal_(self.fc.weight, std=std)
            nn.init.zeros_(self.fc.bias)
            return
        self.fc1 = nn.Linear(dim, cfg.head_hidden)
        self.bn = nn.BatchNorm1d(cfg.head_hidden)
        self.drop = nn.Dropout(cfg.head_dropout)
        self.fc2 = nn.Linear(cfg.head_hidden, num_classes)
        w = init_weights(dim, num_classes, cfg.head_hidden, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            self.fc1.weight.copy_(w.w1.t())
            self.fc1.bias.copy_(w.b1)
            self.fc2.weight.copy_(w.w2.t())
            self.fc2.bias.copy_(w.b2)

    def forward(self, feats: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``noise`` ``(B, >= hidden)`` uniforms: the MLP's dropout keeps unit ``j`` of sample
        ``b`` when ``noise[b, j] >= p`` (the trainer's per-step noise, so a resumed run drops what
        the uninterrupted run dropped); without it dropout draws from the torch RNG."""
        if self.kind == "linear":
            return self.fc(self.norm(feats))
        h = self.bn(self.fc1(feats))  # (B, H)
        p = self.drop.p
        if self.training and p > 0 and noise is not None:
            h = h * ((noise[:, : h.shape[1]] >= p).to(h.dtype) / (1.0 - p))
        else:
            h = self.drop(h)
        return self.fc2(h.relu())


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
    """Encoder + head; ``forward`` takes standardised log-mel windows ``(B, 1, 200, 80)`` ->
    logits."""

    def __init__(
        self, config: ClassifierConfig, labels: Sequence[str] | None = None, seed: int = 0
    ) -> None:
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
        self.head = ClassifierHead(config, seed)
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
        seed: int = 0,
        **head: Any,
    ) -> AudioClassifier:
        """A new head on ``mae``'s encoder; the encoder weights are copied exactly (strict).

        ``head``: the :class:`ClassifierConfig` head fields (``head``, ``head_hidden``, ...).
        """
        cfg = ClassifierConfig(
            mae.config, len(labels), prediction_type, pooling, linear_probe, drop_path, **head
        )
        clf = cls(cfg, labels, seed)
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
        """Pooled encoder features ``(B, F)`` of log-mel windows ``(B, 1, 200, 80)`` (``F``:
        :attr:`ClassifierConfig.feature_dim`)."""
        want = (self.config.encoder.in_chans, *self.config.encoder.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"AudioClassifier expects (B, {want[0]}, {want[1]}, {want[2]}), "
                f"got {tuple(x.shape)}"
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.linear_probe):
            tokens = self.encoder.run(self.encoder.embed(x))  # (B, 1 + L, D)
        return self.pool(tokens)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoder tokens ``(B, 1 + L, D)`` -> the head's input ``(B, F)`` by ``pooling``."""
        if self.config.pooling == "cls":
            return tokens[:, 0]
        if self.config.pooling == "mean":
            return tokens[:, 1:].mean(dim=1)
        enc = self.config.encoder  # bands: (B, 250, D) -> steps (B, 50, 5 D) -> time mean
        return group_tokens(tokens[:, 1:], enc.token_layout, enc.grid_size[1]).mean(dim=1)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, C)``; ``noise`` ``(B, >= num_patches)`` uniforms drive drop path and the
        MLP head's dropout when training (:attr:`ClassifierConfig.num_patches`)."""
        need = self.config.num_patches
        if noise is not None and noise.shape[1] < need:
            raise ValueError(f"training noise needs >= {need} columns, got {noise.shape[1]}")
        self._drop_noise = noise
        try:
            depth = len(self.encoder.blocks)
            return self.head(self.features(x), None if noise is None else noise[:, depth:])
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

    # ---- prediction ------------------------------------------------------------------------------
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
            return self.head(self.pool(encode(x).float())).float()  # tokens (B, 1 + L, D)

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
        """Labels and scores of one clip: ``(N,)``, ``(N, C)`` or ``(C, N)`` (C <= 8) at rate
        ``sr``.

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

    # ---- bookkeeping -----------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_sample(self) -> float:
        """Training FLOPs per 2-s input: forward + backward matmuls (forward only through a
        frozen encoder)."""
        fwd = encoder_flops(self.config.encoder)
        return float(fwd if self.config.linear_probe else 3 * fwd)

    # ---- persistence -----------------------------------------------------------------------------
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
        (model.io's one reader: format tag, header checked before allocating; never executes
        code)."""

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
    **head: Any,
) -> AudioClassifier:
    """``model``: a model spec (:func:`~audiomaepp.model.spec.parse_model_spec`): a model directory
    (``save_pretrained`` / ``convert-release`` output), a Hub repo id, or ``random:<preset>`` (a
    random-init encoder, seeded, the 'no pretraining' baseline).

    The head is initialised from ``seed`` after the encoder, so the same seed gives the same model.
    ``head``: the :class:`ClassifierConfig` head fields (``head="mlp"``, ``head_hidden``, ...).
    """
    spec = parse_model_spec(model)
    if spec.kind == "random":
        torch.manual_seed(seed)  # the encoder's init, as Embedder.random_init makes it
        mae = AudioMAE(AudioMAEConfig.preset(spec.target, **(overrides or {})))
    else:  # a folder or a Hub repo id
        mae = AudioMAE.from_pretrained(spec.target)
    torch.manual_seed(seed)  # the head's init depends on the seed and the encoder's shape only
    return AudioClassifier.from_encoder(
        mae, labels, prediction_type, pooling, linear_probe, drop_path, seed, **head
    )
