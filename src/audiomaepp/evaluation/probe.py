"""The downstream MLP probe on frozen scene embeddings (spec §7, hear-eval-kit "restricted grid").

- Model: ``Linear(d, 1024) -> BatchNorm1d -> Dropout(p) -> ReLU -> Linear(1024, C)``; linear
  weights xavier-normal with hear-eval-kit's gains (1 for the first layer, which follows an
  unknown activation, ``sqrt(2)`` for the projection, which follows a ReLU); biases zero.
- Inputs are standardised with the training split's per-dimension mean and population std (like
  scikit-learn's ``StandardScaler``; a constant dimension gets std 1) so that embeddings of any
  scale train with the fixed learning rate.
- Training: Adam lr 1e-4, batches of 1024 reshuffled every epoch (a split of <= 1024 examples is
  one full batch), softmax cross-entropy (multiclass) or BCE-with-logits (multilabel). Up to 500
  epochs; the primary metric is computed on the validation split every 3 epochs; training stops
  after 20 checks without a strict improvement; the best-validation weights are restored for test.
- Grid: dropout in {0.1, 0.25}; the best validation score wins (ties: the first in the grid).
- Determinism: the initial weights and dropout masks come from ``torch.manual_seed(seed)`` inside
  ``torch.random.fork_rng`` (the caller's RNG state is left untouched); batch order comes from a
  separate ``torch.Generator`` seeded with ``seed``. Same seed + same embeddings -> same result
  on CPU.

A training batch of a single example is skipped (BatchNorm cannot normalise it); this only
happens when ``n_train % batch_size == 1``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .metrics import compute_metrics

__all__ = ["ProbeConfig", "ProbeData", "FitResult", "ProbeResult", "build_probe", "standardize", "predict",
           "fit_probe", "train_probe"]


@dataclass(frozen=True)
class ProbeConfig:
    """Probe hyper-parameters; the defaults are the paper's protocol (override only for tests)."""

    hidden_dim: int = 1024
    lr: float = 1e-4
    batch_size: int = 1024
    dropouts: tuple[float, ...] = (0.1, 0.25)
    max_epochs: int = 500
    check_every: int = 3  # validate every this many epochs
    patience: int = 20  # stop after this many validation checks without improvement
    standardize: bool = True
    device: str = "cpu"


@dataclass
class ProbeData:
    """Embeddings ``x (n, d)`` float32 and multi-hot targets ``y (n, C)`` float32 of one split."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 2 or len(self.x) != len(self.y):
            raise ValueError(f"expected x (n, d) and y (n, C), got {self.x.shape} and {self.y.shape}")


@dataclass
class FitResult:
    """One training run (one dropout value)."""

    dropout: float
    valid_score: float  # best validation primary score (NaN if never finite)
    best_epoch: int  # epoch of the restored checkpoint (1-based)
    epochs: int  # epochs actually run
    model: nn.Module = field(repr=False)


@dataclass
class ProbeResult:
    """Outcome of the dropout grid on one fold for one seed."""

    dropout: float
    valid_score: float
    best_epoch: int
    epochs: int
    test: dict[str, float]  # every task metric on the test split
    grid: dict[float, float]  # dropout -> best validation score


def build_probe(in_dim: int, num_classes: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    """The MLP; initialised from the global torch RNG (seed it first)."""
    first, last = nn.Linear(in_dim, hidden_dim), nn.Linear(hidden_dim, num_classes)
    nn.init.xavier_normal_(first.weight, gain=nn.init.calculate_gain("linear"))
    nn.init.xavier_normal_(last.weight, gain=nn.init.calculate_gain("relu"))
    nn.init.zeros_(first.bias)
    nn.init.zeros_(last.bias)
    return nn.Sequential(first, nn.BatchNorm1d(hidden_dim), nn.Dropout(dropout), nn.ReLU(), last)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale every array with the train split's per-dimension mean and population std."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0  # as StandardScaler: a constant dimension is only centred
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def _loss_fn(prediction_type: str):
    if prediction_type == "multiclass":
        ce = nn.CrossEntropyLoss()
        return lambda logits, y: ce(logits, y.argmax(dim=1))
    if prediction_type == "multilabel":
        return nn.BCEWithLogitsLoss()
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, prediction_type: str, chunk: int = 8192) -> np.ndarray:
    """Class probabilities ``(n, C)``: softmax (multiclass) or sigmoid (multilabel), eval mode."""
    model.eval()
    logits = torch.cat([model(x[i : i + chunk]) for i in range(0, len(x), chunk)])
    probs = logits.softmax(dim=1) if prediction_type == "multiclass" else logits.sigmoid()
    return probs.double().cpu().numpy()


def _score(model, x, y_np, prediction_type, metric) -> float:
    return compute_metrics([metric], predict(model, x, prediction_type), y_np)[metric]


def _train_epoch(model, opt, loss_fn, x, y, batch_size, gen) -> None:
    """One pass over ``x (n, d)``, ``y (n, C)``; a single full batch needs no shuffling."""
    model.train()
    if len(x) <= batch_size:
        batches = [(x, y)]  # the order inside one batch changes nothing but the dropout masks
    else:
        perm = torch.randperm(len(x), generator=gen).to(x.device)
        batches = [(x[idx], y[idx]) for idx in perm.split(batch_size)]
    for xb, yb in batches:
        if len(xb) < 2:
            continue  # BatchNorm cannot train on a single example
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()


def _fork_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def fit_probe(
    train: ProbeData, valid: ProbeData, prediction_type: str, metric: str,
    dropout: float, seed: int, cfg: ProbeConfig,
) -> FitResult:
    """Train one probe with early stopping on ``metric``; the returned model has the best weights.

    Inputs are expected already standardised (see :func:`standardize`).
    """
    device = torch.device(cfg.device)
    x, y = (torch.from_numpy(a).to(device) for a in (train.x, train.y))
    xv = torch.from_numpy(valid.x).to(device)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = _loss_fn(prediction_type)
    with torch.random.fork_rng(devices=_fork_devices(device)):
        torch.manual_seed(seed)
        model = build_probe(x.shape[1], y.shape[1], cfg.hidden_dim, dropout).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        best, best_state, best_epoch, waited, epoch = -math.inf, None, 0, 0, 0
        for epoch in range(1, cfg.max_epochs + 1):
            _train_epoch(model, opt, loss_fn, x, y, cfg.batch_size, gen)
            last = epoch == cfg.max_epochs and best_state is None  # short runs: check at the end
            if epoch % cfg.check_every and not last:
                continue
            score = _score(model, xv, valid.y, prediction_type, metric)
            if score > best:  # strict, like Lightning's EarlyStopping / ModelCheckpoint; NaN never wins
                best, best_state, best_epoch, waited = score, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                waited += 1
                if waited >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epoch
    return FitResult(dropout, best if best_state is not None else math.nan, best_epoch, epoch, model)


def train_probe(
    train: ProbeData, valid: ProbeData, test: ProbeData, prediction_type: str,
    metrics: tuple[str, ...] | list[str], seed: int, cfg: ProbeConfig = ProbeConfig(),
) -> ProbeResult:
    """Dropout grid on one fold: select on the validation primary metric (``metrics[0]``), test.

    ``train/valid/test`` hold raw embeddings; they are standardised here when
    ``cfg.standardize`` (train statistics only).
    """
    if cfg.standardize:
        xs = standardize(train.x, valid.x, test.x)
        train, valid, test = (ProbeData(a, d.y) for a, d in zip(xs, (train, valid, test), strict=True))
    fits = [fit_probe(train, valid, prediction_type, metrics[0], p, seed, cfg) for p in cfg.dropouts]
    best = fits[0]
    for f in fits[1:]:
        if f.valid_score > best.valid_score or (math.isnan(best.valid_score) and not math.isnan(f.valid_score)):
            best = f
    xt = torch.from_numpy(test.x).to(torch.device(cfg.device))
    scores = compute_metrics(list(metrics), predict(best.model, xt, prediction_type), test.y)
    return ProbeResult(best.dropout, best.valid_score, best.best_epoch, best.epochs, scores,
                       {f.dropout: f.valid_score for f in fits})
