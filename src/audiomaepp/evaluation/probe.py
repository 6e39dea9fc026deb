"""The downstream MLP probe on frozen scene embeddings: hear-eval-kit 2021.1.3's protocol (spec §7).

Every choice below mirrors a line of ``heareval/predictions/task_predictions.py`` with the
MW-MAE / AudioMAE++ "restricted grid"; docs/EVALUATION.md lists them side by side.

- Model: ``Linear(d, 1024) -> BatchNorm1d -> Dropout(p) -> ReLU -> Linear(1024, C)`` on the raw
  embeddings (the kit's ``# x = self.layernorm(x)`` is commented out). Each Linear is first
  initialised as ``nn.Linear`` does (kaiming-uniform weight, uniform bias) and its weight is then
  redrawn xavier-normal, gain 1 (``"linear"``) for the first layer and ``sqrt(2)`` (``"relu"``)
  for the projection; the biases keep PyTorch's default.
- Training: Adam lr 1e-4, batches of 1024 in the order of the training splits (the kit never
  shuffles: its ``split_name == "train"`` test sees a list), softmax cross-entropy (multiclass) or
  BCE-with-logits (multilabel). Up to 500 epochs; validation after every 3rd epoch; training stops
  when 20 checks in a row bring no strict improvement, or at the first non-finite score
  (Lightning's ``EarlyStopping``); the best-validation weights are used for test
  (``ModelCheckpoint``).
- Standardising the inputs with training statistics is an opt-in deviation (``standardize``).

**Batched.** The probes of many (seed, dropout) *members* are trained at once as one stacked
model: weights ``(M, ...)``, per-member BatchNorm statistics and losses. Members
never interact, and each one computes exactly what it would alone (``fit_members`` with that one
member): its initial weights and dropout masks come from its own ``torch.Generator`` seeded with
its seed, every batch is the same for all members, and the only ops used across the stack are
matrix products member by member, exactly rounded element-wise ops and reductions over one member's
rows; losses and probabilities (transcendental functions) are computed member by member. A
member leaves the stack when it stops early. ``tests/test_evaluation.py`` checks bit equality.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import compute_metrics

__all__ = [
    "ProbeConfig",
    "ProbeData",
    "Member",
    "ProbeWeights",
    "FitResult",
    "ProbeResult",
    "init_weights",
    "standardize",
    "predict",
    "fit_members",
    "grid_order",
    "select_dropout",
    "probe_folds",
]

BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # torch.nn.BatchNorm1d defaults, as the kit uses them
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam defaults, as the kit uses them


@dataclass(frozen=True)
class ProbeConfig:
    """Probe hyper-parameters; every default is hear-eval-kit's (restricted grid)."""

    hidden_dim: int = 1024  # PARAM_GRID "hidden_dim": [1024]
    lr: float = 1e-4  # restricted grid "lr": [1e-4]
    batch_size: int = 1024  # PARAM_GRID "batch_size": [1024]
    dropouts: tuple[float, ...] = (0.1, 0.25)  # restricted grid "dropout": [0.1, 0.25]
    max_epochs: int = 500  # PARAM_GRID "max_epochs": [500]
    check_every: int = 3  # PARAM_GRID "check_val_every_n_epoch": [3]
    patience: int = 20  # PARAM_GRID "patience": [20], counted in validation checks
    standardize: bool = False  # deviation when True: per-dimension train mean/std before the MLP
    device: str = "cpu"  # the probe is small; CPU results are the reproducible ones


@dataclass
class ProbeData:
    """Embeddings ``x (n, d)`` float32 and multi-hot targets ``y (n, C)`` float32 of one split."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 2 or len(self.x) != len(self.y):
            raise ValueError(
                f"expected x (n, d) and y (n, C), got {self.x.shape} and {self.y.shape}"
            )


@dataclass(frozen=True)
class Member:
    """One probe of a batch: its seed and its dropout."""

    seed: int
    dropout: float


@dataclass
class ProbeWeights:
    """One member's (or a stack's, leading ``M``) weights: ``w1 (d, H)``, ``w2 (H, C)`` transposed
    for ``x @ w``; BatchNorm's affine ``gamma, beta (H,)`` and running statistics ``(H,)``."""

    w1: torch.Tensor
    b1: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    PARAMS = ("w1", "b1", "gamma", "beta", "w2", "b2")  # trained by Adam; the rest are buffers

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in (*self.PARAMS, "running_mean", "running_var")}

    def member(self, i: int) -> ProbeWeights:
        """Member ``i`` of a stack, detached and cloned (a checkpoint)."""
        return ProbeWeights(**{k: v[i].detach().clone() for k, v in self.tensors().items()})

    @staticmethod
    def stack(members: list[ProbeWeights]) -> ProbeWeights:
        return ProbeWeights(
            **{k: torch.stack([getattr(m, k) for m in members]) for k in members[0].tensors()}
        )


@dataclass
class FitResult:
    """One member's training run."""

    member: Member
    valid_score: float  # best validation primary score (-inf if never finite, as Lightning's)
    best_epoch: int  # epoch of the checkpoint used for test (1-based)
    epochs: int  # epochs actually run
    weights: ProbeWeights


@dataclass
class ProbeResult:
    """Outcome of one seed on one fold."""

    dropout: float
    valid_score: float
    best_epoch: int
    epochs: int
    test: dict[str, float]  # every task metric on the test split
    grid: dict[float, float]  # dropout -> validation score (the grid fold only; else one entry)


def _linear(
    fan_in: int, fan_out: int, gain: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.Linear(fan_in, fan_out)`` then ``xavier_normal_(weight, gain)``, drawn from ``gen`` in
    the same order as the kit (so a generator seeded like ``torch.manual_seed`` gives its weights)."""
    w = torch.empty(fan_out, fan_in)
    torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)  # nn.Linear.reset_parameters
    bound = 1.0 / math.sqrt(fan_in)
    b = torch.empty(fan_out).uniform_(-bound, bound, generator=gen)
    torch.nn.init.xavier_normal_(w, gain=gain, generator=gen)
    return w.t().contiguous(), b


def init_weights(
    in_dim: int, num_classes: int, hidden_dim: int, gen: torch.Generator
) -> ProbeWeights:
    """Initial weights of one probe, from ``gen`` (the kit's ``FullyConnectedPrediction`` order)."""
    w1, b1 = _linear(in_dim, hidden_dim, torch.nn.init.calculate_gain("linear"), gen)
    w2, b2 = _linear(hidden_dim, num_classes, torch.nn.init.calculate_gain("relu"), gen)
    return ProbeWeights(
        w1,
        b1,
        torch.ones(hidden_dim),
        torch.zeros(hidden_dim),
        w2,
        b2,
        torch.zeros(hidden_dim),
        torch.ones(hidden_dim),
    )


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Opt-in deviation: scale every array with the train split's per-dimension mean and std."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0  # as StandardScaler: a constant dimension is only centred
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


# ---- the stacked model ---------------------------------------------------------------------------------------
def _per_member_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (M, n, k) or (n, k) @ b (M, k, m) -> (M, n, m)``, one ``torch.mm`` per member.

    ``torch.bmm`` picks its CPU kernel by batch size, so a member's product could change in the
    last bit with the size of the stack; separate products cannot."""
    lhs = [a] * len(b) if a.dim() == 2 else a.unbind(0)  # unbind: indexing's backward would
    return torch.stack(
        [x @ w for x, w in zip(lhs, b.unbind(0), strict=True)]
    )  # zero-fill (M, ...) per member


def _hidden(w: ProbeWeights, x: torch.Tensor) -> torch.Tensor:
    """``x (n, d)`` shared by the stack -> first layer ``(M, n, H)``."""
    return _per_member_mm(x, w.w1) + w.b1[:, None, :]


def _logits_train(w: ProbeWeights, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Training forward ``(M, n, C)``: batch statistics (biased variance), updates the running ones."""
    h = _hidden(w, x)
    n = h.shape[1]
    mean = h.mean(dim=1, keepdim=True)
    centred = h - mean
    var = (centred * centred).mean(dim=1, keepdim=True)
    h = centred / torch.sqrt(var + BN_EPS) * w.gamma[:, None, :] + w.beta[:, None, :]
    with torch.no_grad():  # BatchNorm1d's running statistics use the unbiased variance
        w.running_mean.mul_(1 - BN_MOMENTUM).add_(mean[:, 0] * BN_MOMENTUM)
        w.running_var.mul_(1 - BN_MOMENTUM).add_(var[:, 0] * (n / (n - 1)) * BN_MOMENTUM)
    return (
        _per_member_mm(torch.relu(h * masks), w.w2) + w.b2[:, None, :]
    )  # BN -> Dropout -> ReLU -> Linear


@torch.no_grad()
def _logits_eval(w: ProbeWeights, x: torch.Tensor) -> torch.Tensor:
    """Eval forward ``(M, n, C)``: running statistics, no dropout."""
    h = _hidden(w, x)
    h = (h - w.running_mean[:, None, :]) / torch.sqrt(w.running_var[:, None, :] + BN_EPS)
    h = h * w.gamma[:, None, :] + w.beta[:, None, :]
    return _per_member_mm(torch.relu(h), w.w2) + w.b2[:, None, :]


def _member_loss(logits: torch.Tensor, y: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Mean loss of one member's ``logits (n, C)`` (the kit's ``OneHotToCrossEntropyLoss`` / BCE)."""
    if prediction_type == "multiclass":
        return F.cross_entropy(logits, y.argmax(dim=1))
    if prediction_type == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, y)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def _probabilities(logits: torch.Tensor, prediction_type: str) -> np.ndarray:
    """``(M, n, C)`` logits -> probabilities, member by member (softmax or sigmoid) -> float64."""
    act = (lambda z: z.softmax(dim=1)) if prediction_type == "multiclass" else torch.sigmoid
    return np.stack([act(logits[m]).double().cpu().numpy() for m in range(len(logits))])


def predict(
    weights: ProbeWeights, x: np.ndarray | torch.Tensor, prediction_type: str, chunk: int = 8192
) -> np.ndarray:
    """Class probabilities ``(n, C)`` of one member's weights (eval mode)."""
    w = ProbeWeights.stack([weights])
    x = torch.as_tensor(x, device=w.w1.device)
    logits = torch.cat([_logits_eval(w, x[i : i + chunk]) for i in range(0, len(x), chunk)], dim=1)
    return _probabilities(logits, prediction_type)[0]


class _Adam:
    """``torch.optim.Adam`` (no weight decay) on stacked tensors, written with exactly rounded
    element-wise ops only, so a member's update never depends on where it sits in the stack."""

    def __init__(self, params: dict[str, torch.Tensor], lr: float):
        self.params, self.lr, self.step_count = params, lr, 0
        self.m = {k: torch.zeros_like(v) for k, v in params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()}

    def step(self) -> None:
        (b1, b2), self.step_count = ADAM_BETAS, self.step_count + 1
        step_size = self.lr / (1 - b1**self.step_count)
        bc2_sqrt = math.sqrt(1 - b2**self.step_count)
        with torch.no_grad():
            for k, p in self.params.items():
                g = p.grad
                self.m[k].mul_(b1).add_(g * (1 - b1))
                self.v[k].mul_(b2).add_(g * g * (1 - b2))
                denom = torch.sqrt(self.v[k]) / bc2_sqrt + ADAM_EPS
                p.sub_(self.m[k] / denom * step_size)
                p.grad = None

    def keep(self, index: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        """Continue with the members at ``index`` only (``params``: their new leaf tensors)."""
        self.params = params
        self.m = {k: v[index] for k, v in self.m.items()}
        self.v = {k: v[index] for k, v in self.v.items()}


def _batches(n: int, batch_size: int) -> list[slice]:
    """The kit's unshuffled DataLoader batches; a last batch of one example is dropped, because
    BatchNorm cannot train on it (the kit would raise there)."""
    return [
        slice(i, min(i + batch_size, n))
        for i in range(0, n, batch_size)
        if min(i + batch_size, n) - i > 1
    ]


def fit_members(
    train: ProbeData,
    valid: ProbeData,
    prediction_type: str,
    metric: str,
    members: list[Member],
    cfg: ProbeConfig = ProbeConfig(),
) -> list[FitResult]:
    """Train every member's probe with early stopping on ``metric``; one result per member, each
    holding its best-validation weights. Inputs are used as given (standardise beforehand if wanted)."""
    if not members:
        return []
    device = torch.device(cfg.device)
    x, y = (
        torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)
        for a in (train.x, train.y)
    )
    xv = torch.from_numpy(np.ascontiguousarray(valid.x, dtype=np.float32)).to(device)
    gens = [torch.Generator().manual_seed(m.seed) for m in members]  # init, then dropout masks
    w = ProbeWeights.stack([init_weights(x.shape[1], y.shape[1], cfg.hidden_dim, g) for g in gens])
    w = ProbeWeights(**{k: v.to(device) for k, v in w.tensors().items()})
    for k in ProbeWeights.PARAMS:
        getattr(w, k).requires_grad_(True)
    opt = _Adam({k: getattr(w, k) for k in ProbeWeights.PARAMS}, cfg.lr)
    active = list(range(len(members)))  # stack row -> member index
    best = [-math.inf] * len(members)
    best_w: list[ProbeWeights | None] = [None] * len(members)
    best_epoch, waited, stopped = [0] * len(members), [0] * len(members), [0] * len(members)
    batches = _batches(len(x), cfg.batch_size)
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        for sl in batches:
            masks = torch.stack(
                [
                    _dropout_mask(sl.stop - sl.start, cfg.hidden_dim, members[i].dropout, gens[i])
                    for i in active
                ]
            ).to(device)
            logits = _logits_train(w, x[sl], masks)
            loss = torch.stack(
                [_member_loss(z, y[sl], prediction_type) for z in logits.unbind(0)]
            ).sum()
            loss.backward()  # the sum's gradient is 1 for every member: members stay independent
            opt.step()
        # Lightning validates after epochs 3, 6, ...; a run shorter than one interval checks at its end
        if epoch % cfg.check_every and not (epoch == cfg.max_epochs and epoch < cfg.check_every):
            continue
        probs = _probabilities(_logits_eval(w, xv), prediction_type)
        keep = []
        for r, i in enumerate(active):
            score = compute_metrics([metric], probs[r], valid.y)[metric]
            if best_w[i] is None or score > best[i]:  # ModelCheckpoint: first check always saved
                best_w[i], best_epoch[i] = w.member(r), epoch
                best[i] = score if math.isfinite(score) or score == math.inf else -math.inf
                waited[i] = 0 if math.isfinite(score) else waited[i]
            else:
                waited[i] += 1
            done = (
                not math.isfinite(score) or waited[i] >= cfg.patience
            )  # EarlyStopping, check_finite
            if done:
                stopped[i] = epoch
            else:
                keep.append(r)
        if len(keep) < len(active):
            if not keep:
                break
            w = _keep_rows(w, keep, opt)
            active = [active[r] for r in keep]
    for i in active:
        stopped[i] = epoch
    return [
        FitResult(m, best[i], best_epoch[i], stopped[i], best_w[i]) for i, m in enumerate(members)
    ]


def _dropout_mask(n: int, hidden: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """``nn.Dropout``'s training mask ``(n, H)``: Bernoulli(1 - p) / (1 - p)."""
    if p == 0:
        return torch.ones(n, hidden)
    return torch.empty(n, hidden).bernoulli_(1 - p, generator=gen).div_(1 - p)


def _keep_rows(w: ProbeWeights, rows: list[int], opt: _Adam) -> ProbeWeights:
    """The stack restricted to ``rows`` (new leaf tensors), and the optimizer state with it."""
    index = torch.tensor(rows, device=w.w1.device)
    kept = ProbeWeights(**{k: v.detach()[index] for k, v in w.tensors().items()})
    for k in ProbeWeights.PARAMS:
        getattr(kept, k).requires_grad_(True)
    opt.keep(index, {k: getattr(kept, k) for k in ProbeWeights.PARAMS})
    return kept


# ---- the grid and the folds (the kit's task_predictions) -------------------------------------------------------
def grid_order(dropouts: tuple[float, ...], seed: int) -> list[float]:
    """The kit's grid order for ``seed``: ``random.shuffle`` right after ``seed_everything(seed)``."""
    order = list(dropouts)
    random.Random(seed).shuffle(order)
    return order


def select_dropout(scores: dict[float, float], dropouts: tuple[float, ...], seed: int) -> float:
    """Best validation score wins; ties go to the earlier grid point in the kit's shuffled order
    (its ``sorted(..., reverse=True)`` is stable)."""
    return sorted(grid_order(dropouts, seed), key=lambda p: scores[p], reverse=True)[0]


def probe_folds(
    folds: list[tuple[ProbeData, ProbeData, ProbeData]],
    prediction_type: str,
    metrics: tuple[str, ...] | list[str],
    seeds: list[int],
    cfg: ProbeConfig = ProbeConfig(),
) -> list[list[ProbeResult]]:
    """All seeds of one task: ``result[seed_index][fold_index]``.

    As the kit: the dropout grid is searched on the first fold only (its ``data_splits[0]``); the
    other folds are trained with each seed's chosen dropout; every fold is tested with its
    best-validation weights. Each fold is one batched model over all its members.
    """
    out: list[list[ProbeResult]] = [[] for _ in seeds]
    chosen: list[float] = []
    for f, (train, valid, test) in enumerate(folds):
        if cfg.standardize:
            xs = standardize(train.x, valid.x, test.x)
            train, valid, test = (
                ProbeData(a, d.y) for a, d in zip(xs, (train, valid, test), strict=True)
            )
        if f == 0:
            members = [Member(s, p) for s in seeds for p in cfg.dropouts]
        else:
            members = [Member(s, p) for s, p in zip(seeds, chosen, strict=True)]
        fits = fit_members(train, valid, prediction_type, metrics[0], members, cfg)
        by_member = {(r.member.seed, r.member.dropout): r for r in fits}
        if f == 0:
            for s in seeds:
                grid = {p: by_member[(s, p)].valid_score for p in cfg.dropouts}
                chosen.append(select_dropout(grid, cfg.dropouts, s))
        for k, (s, p) in enumerate(zip(seeds, chosen, strict=True)):
            r = by_member[(s, p)]
            scores = compute_metrics(
                list(metrics), predict(r.weights, test.x, prediction_type), test.y
            )
            grid = (
                {q: by_member[(s, q)].valid_score for q in cfg.dropouts}
                if f == 0
                else {p: r.valid_score}
            )
            out[k].append(ProbeResult(p, r.valid_score, r.best_epoch, r.epochs, scores, grid))
    return out
