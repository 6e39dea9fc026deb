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
model (``fit_members``). The stack is walked in chunks of members whose activations fit in cache;
a chunk's first layers are one matrix product on the shared batch, its second layers one batched
product; BatchNorm, dropout, ReLU and the losses are written by hand, forward and backward,
vectorised over the members (autograd's per-op overhead would dominate at these sizes); one fused
``torch.optim.Adam`` step updates all stacked parameters. Members never interact: each draws its
initial weights and its dropout masks from its own generators (the first fold's initial weights
are the kit's draw for the seed; see ``_init_seed``, ``_mask_seed``), and a member leaves the
stack when it stops early. A member's result does not depend on which others ride along, up to
the last bits of the shared matrix products: ``tests/test_evaluation.py`` checks that a member
trained in a stack and alone reach the same epochs and validation scores, probabilities within
1e-4.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.optim.adam import adam as _adam_step

from ..seeds import mix_seed
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
    # "restart": every fold reuses the first fold's draws (the probe before 2026-12; the k-fold
    # study, benchmarks/golden_kfold.py); "independent": later folds draw their own, as the kit's
    # one running stream does
    fold_streams: str = "independent"
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
    """One probe of a batch: its seed, its dropout and the fold it trains on (0: the grid fold)."""

    seed: int
    dropout: float
    fold: int = 0  # later folds draw their own initial weights and masks (see _init_seed)


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

    PARAMS = ("w1", "b1", "gamma", "beta", "w2", "b2")  # the kit's parameters (b1: see _Stack)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in (*self.PARAMS, "running_mean", "running_var")}


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
    the same order as the kit (a generator seeded like ``torch.manual_seed`` gives its weights)."""
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


# ---- the stacked model ---------------------------------------------------------------------------
# Layout: a stack of M members keeps every weight feature-major, as nn.Linear does:
# ``w1 (M, H, d)``, ``w2 (M, C, H)``, and activations ``(M, H, n)`` (features x batch). The first
# layer of members r0..r1 is then ONE matrix product ``w1[r0:r1].view(-1, d) @ x.T`` on the shared
# batch, the second one batched product, and BatchNorm's statistics reduce contiguous rows.
DROPOUT_STREAM = 0x5D20  # mix_seed coordinate of a member's dropout-mask stream
FOLD_STREAM = 0xF01D  # mix_seed coordinate of a later fold's initial weights


def _init_seed(member: Member) -> int:
    """Seed of a member's initial weights: its seed on the first fold (the kit's draw for that
    seed), an independent draw per later fold (the kit runs one stream on through the folds)."""
    return member.seed if member.fold == 0 else mix_seed(FOLD_STREAM, member.seed, member.fold)


def _mask_seed(member: Member) -> int:
    """Seed of a member's dropout masks: its own stream, whatever else rides in the stack."""
    return mix_seed(DROPOUT_STREAM, member.seed, member.fold, round(member.dropout * 2**20))


class _Stack:
    """The training state of M members: parameters, Adam moments, BatchNorm buffers; each tensor
    leads with M. Gradients are written by hand (``_train_step``); autograd is not used."""

    TRAINED = ("w1", "gamma", "beta", "w2", "b2")  # b1: zero gradient (BatchNorm removes it)
    BUFFERS = ("b1", "running_mean", "running_var", "scale", "thresholds", "no_drop")

    def __init__(self, weights: list[ProbeWeights], dropouts: list[float], device: torch.device):
        def put(ts: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(ts).to(device=device, dtype=torch.float32).contiguous()

        self.w1 = put([w.w1.t() for w in weights])  # (M, H, d)
        self.w2 = put([w.w2.t() for w in weights])  # (M, C, H)
        for k in ("b1", "gamma", "beta", "b2", "running_mean", "running_var"):
            setattr(self, k, put([getattr(w, k) for w in weights]))
        self.scale = torch.tensor([1 / (1 - p) for p in dropouts], device=device)  # (M,)
        thr = [min(_threshold(1 - p), 32767) for p in dropouts]  # dropout 0: see no_drop
        self.thresholds = torch.tensor(thr, dtype=torch.int16, device=device)
        self.no_drop = torch.tensor([p == 0 for p in dropouts], device=device)  # (M,) keep all
        self.exp_avg = [torch.zeros_like(getattr(self, k)) for k in self.TRAINED]
        self.exp_avg_sq = [torch.zeros_like(getattr(self, k)) for k in self.TRAINED]
        self.steps = [torch.zeros((), device=device) for _ in self.TRAINED]

    def __len__(self) -> int:
        return len(self.w1)

    def keep(self, rows: list[int]) -> None:
        """Continue with the stack rows ``rows`` only (early-stopped members leave)."""
        index = torch.tensor(rows, device=self.w1.device)
        for k in (*self.TRAINED, *self.BUFFERS):
            setattr(self, k, getattr(self, k)[index])
        self.exp_avg = [t[index] for t in self.exp_avg]
        self.exp_avg_sq = [t[index] for t in self.exp_avg_sq]

    def weights(self, r: int) -> ProbeWeights:
        """Stack row ``r`` as :class:`ProbeWeights` (cloned, ``x @ w`` layout)."""
        w = {k: getattr(self, k)[r].clone() for k in ("b1", "gamma", "beta", "b2")}
        w |= {k: getattr(self, k)[r].clone() for k in ("running_mean", "running_var")}
        return ProbeWeights(w1=self.w1[r].t().contiguous(), w2=self.w2[r].t().contiguous(), **w)

    def adam(self, grads: list[torch.Tensor], lr: float) -> None:
        """One ``torch.optim.Adam`` step (no weight decay) over all stacked parameters, fused."""
        _adam_step(
            [getattr(self, k) for k in self.TRAINED],
            grads,
            self.exp_avg,
            self.exp_avg_sq,
            [],
            self.steps,
            fused=True,
            amsgrad=False,
            beta1=ADAM_BETAS[0],
            beta2=ADAM_BETAS[1],
            lr=lr,
            weight_decay=0.0,
            eps=ADAM_EPS,
            maximize=False,
        )


def _loss_grad(logits: torch.Tensor, yt: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Gradient of each member's mean loss w.r.t. its ``logits (M, C, n)``; ``yt (C, n)`` multi-hot.
    Softmax cross-entropy (the kit's ``OneHotToCrossEntropyLoss``) or BCE-with-logits."""
    n = logits.shape[2]
    if prediction_type == "multiclass":
        return logits.softmax(dim=1).sub_(yt).div_(n)
    if prediction_type == "multilabel":
        return torch.sigmoid(logits).sub_(yt).div_(n * logits.shape[1])
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


CHUNK_BYTES = 2 << 20  # activations of one member chunk (M_c, H, n) float: cache-resident passes


def _train_step(
    st: _Stack,
    x: torch.Tensor,
    xt: torch.Tensor,
    yt: torch.Tensor,
    bits: torch.Tensor,
    prediction_type: str,
    lr: float,
) -> torch.Tensor:
    """One training step of every member on the shared batch ``x (n, d)`` (and ``xt``, its
    contiguous transpose), targets ``yt (C, n)``; ``bits (M, H, n)`` int16: dropout's draws (see
    ``_draw_bits``). Linear -> BatchNorm1d (batch statistics) -> Dropout -> ReLU -> Linear, forward
    and backward by hand, then one fused Adam step. Returns the logits ``(M, C, n)``.

    The stack is walked in chunks of members whose activations fit in cache: each chunk's first
    layer is one matrix product on the shared batch, and the element-wise passes that follow read
    from cache instead of memory (a whole stack's ``(M, H, n)`` tensors do not fit)."""
    m, hid, d = st.w1.shape
    n = x.shape[0]
    grads = [torch.empty_like(getattr(st, k)) for k in st.TRAINED]
    logits = torch.empty(m, st.w2.shape[1], n, device=x.device)
    step = max(1, CHUNK_BYTES // (4 * hid * n))
    for r0 in range(0, m, step):
        rows = slice(r0, min(r0 + step, m))
        logits[rows] = _chunk_step(st, rows, x, xt, yt, bits[rows], prediction_type, grads)
    st.adam(grads, lr)
    return logits


def _chunk_step(st, rows, x, xt, yt, bits, prediction_type, grads) -> torch.Tensor:
    """Forward and backward of the members ``rows`` of the stack; gradients into ``grads``
    (``_Stack.TRAINED`` order), BatchNorm's running statistics updated; returns their logits."""
    w1, gamma, beta, w2 = st.w1[rows], st.gamma[rows], st.beta[rows], st.w2[rows]
    m, hid, d = w1.shape
    n = x.shape[0]
    z = torch.mm(w1.view(m * hid, d), xt)  # (m*H, n): the chunk's first layers in one product
    mean = z.sum(dim=1).div_(n)  # BatchNorm's batch statistics per (member, feature)
    z.sub_(mean[:, None])  # centred in place (b1 is removed by the centring; see the running mean)
    var = torch.linalg.vector_norm(z, dim=1).square_().div_(n)  # biased, as BatchNorm normalises
    rstd = (var + BN_EPS).rsqrt_()
    s = gamma.reshape(-1) * rstd  # (m*H,) BatchNorm's per-feature scale
    keep = torch.empty(bits.shape, device=bits.device)  # dropout: 1 kept, 0 zeroed
    torch.lt(bits, st.thresholds[rows, None, None], out=keep)
    keep[st.no_drop[rows]] = 1
    a = (z * s[:, None]).add_(beta.reshape(-1, 1)).clamp_min_(0)  # ReLU(BN): ReLU and dropout
    a = a.view(m, hid, n).mul_(keep)  # commute; 1/(1-p) is folded into w2 below
    scale = st.scale[rows, None, None]
    w2s = w2 * scale  # (m, C, H)
    logits = torch.baddbmm(st.b2[rows, :, None], w2s, a)  # (m, C, n)
    dl = _loss_grad(logits, yt, prediction_type)
    g_w1, g_gamma, g_beta, g_w2, g_b2 = (g[rows] for g in grads)
    torch.bmm(dl, a.transpose(1, 2), out=g_w2).mul_(scale)  # (m, C, H)
    torch.sum(dl, dim=2, out=g_b2)
    dh = torch.bmm(w2s.transpose(1, 2), dl)  # (m, H, n)
    torch.ops.aten.threshold_backward(dh, a, 0, grad_input=dh)  # zero where ReLU or dropout cut
    dh = dh.view(m * hid, n)  # gradient at BatchNorm's output
    torch.sum(dh, dim=1, out=g_beta.view(-1))
    dot = torch.linalg.vecdot(dh, z, dim=1)  # sum over the batch of dh * (z - mean)
    torch.mul(dot, rstd, out=g_gamma.view(-1))
    # dL/dz = s * (dh - mean(dh) - xhat * mean(dh * xhat)), xhat = (z - mean) * rstd; in place
    dz = dh.mul_(s[:, None]).add_(z.mul_((s * rstd * rstd * dot / -n)[:, None]))
    dz.add_((s * g_beta.view(-1) / -n)[:, None])
    torch.mm(dz, x, out=g_w1.view(m * hid, d))  # the chunk's first-layer weight gradients
    with torch.no_grad():  # BatchNorm1d's running statistics use the unbiased variance
        mom = BN_MOMENTUM
        st.running_mean[rows].mul_(1 - mom).add_((mean.view(m, hid) + st.b1[rows]) * mom)
        st.running_var[rows].mul_(1 - mom).add_(var.view(m, hid) * (n / (n - 1) * mom))
    return logits


def _eval_logits(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Eval forward of stacked weights (``_Stack`` layout) on ``x (n, d)``: running statistics, no
    dropout -> logits ``(M, C, n)``."""
    m, hid, d = w["w1"].shape
    z = torch.mm(w["w1"].reshape(m * hid, d), x.t())  # (M*H, n)
    s = w["gamma"] * (w["running_var"] + BN_EPS).rsqrt()  # (M, H)
    t = w["beta"] + (w["b1"] - w["running_mean"]) * s
    a = torch.addcmul(t.view(-1, 1), z, s.view(-1, 1)).clamp_min_(0).view(m, hid, len(x))
    return torch.baddbmm(w["b2"][:, :, None], w["w2"], a)


def _probabilities(logits: torch.Tensor, prediction_type: str) -> np.ndarray:
    """``(M, C, n)`` logits -> probabilities ``(M, n, C)`` (softmax or sigmoid) as float64."""
    act = logits.softmax(dim=1) if prediction_type == "multiclass" else torch.sigmoid(logits)
    return act.transpose(1, 2).double().cpu().numpy()


def _stack_view(st: _Stack) -> dict[str, torch.Tensor]:
    return {k: getattr(st, k) for k in (*_Stack.TRAINED, *_Stack.BUFFERS)}


def predict(
    weights: ProbeWeights, x: np.ndarray | torch.Tensor, prediction_type: str, chunk: int = 8192
) -> np.ndarray:
    """Class probabilities ``(n, C)`` of one member's weights (eval mode)."""
    device = weights.w1.device
    w = {k: v[None].to(torch.float32) for k, v in weights.tensors().items()}
    w["w1"], w["w2"] = weights.w1.t()[None], weights.w2.t()[None]
    x = torch.as_tensor(x, device=device, dtype=torch.float32)
    with torch.no_grad():
        logits = [_eval_logits(w, x[i : i + chunk]) for i in range(0, len(x), chunk)]
    return _probabilities(torch.cat(logits, dim=2), prediction_type)[0]


def _draw_bits(gens: list[np.random.PCG64], hidden: int, n: int) -> torch.Tensor:
    """Dropout draws ``(M, H, n)`` int16, each member's from its own PCG64 stream (several times
    cheaper per bit than torch's CPU generator, and the same bits on any device); a unit is kept
    where its bits are below the member's threshold (``_Stack.thresholds``)."""
    words = (hidden * n + 3) // 4  # 64-bit words, four units each
    bits = np.empty((len(gens), words), np.uint64)
    for r, g in enumerate(gens):  # one call per member and batch; each call is vectorised
        bits[r] = g.random_raw(words)
    return torch.from_numpy(bits.view(np.int16)[:, : hidden * n]).view(len(gens), hidden, n)


def _threshold(keep_p: float) -> int:
    """int16 threshold for uniform 16-bit draws: the keep probability quantised to 1/65536 (0.9 ->
    0.899994, 0.75 exactly); dropout 0 is handled apart (``_Stack.no_drop``)."""
    return round(keep_p * 65536) - 32768


def _batches(n: int, batch_size: int) -> list[slice]:
    """The kit's unshuffled DataLoader batches; a last batch of one example is dropped, because
    BatchNorm cannot train on it (the kit would raise there)."""
    return [
        slice(i, min(i + batch_size, n))
        for i in range(0, n, batch_size)
        if min(i + batch_size, n) - i > 1
    ]


@dataclass
class _Track:
    """Early stopping and checkpointing of one member (Lightning's EarlyStopping and
    ModelCheckpoint on the validation score)."""

    best: float = -math.inf
    best_epoch: int = 0
    waited: int = 0
    stopped: int = 0
    weights: ProbeWeights | None = None

    def check(self, score: float, epoch: int, st: _Stack, row: int, patience: int) -> bool:
        """Record one validation score; True when the member stops."""
        if self.weights is None or score > self.best:  # ModelCheckpoint: first check always saved
            self.weights, self.best_epoch = st.weights(row), epoch
            self.best = score if math.isfinite(score) or score == math.inf else -math.inf
            self.waited = 0 if math.isfinite(score) else self.waited
        else:
            self.waited += 1
        return not math.isfinite(score) or self.waited >= patience  # EarlyStopping, check_finite


def fit_members(
    train: ProbeData,
    valid: ProbeData,
    prediction_type: str,
    metric: str,
    members: list[Member],
    cfg: ProbeConfig = ProbeConfig(),
) -> list[FitResult]:
    """Train every member's probe with early stopping on ``metric``; one result per member, each
    holding its best-validation weights. Inputs are used as given (standardise beforehand if
    wanted)."""
    if not members:
        return []
    if prediction_type not in ("multiclass", "multilabel"):
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    device = torch.device(cfg.device)
    x, y, xv = (
        torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)
        for a in (train.x, train.y, valid.x)
    )
    inits = [
        init_weights(x.shape[1], y.shape[1], cfg.hidden_dim, torch.Generator().manual_seed(s))
        for s in map(_init_seed, members)
    ]
    st = _Stack(inits, [m.dropout for m in members], device)
    gens = [np.random.PCG64(_mask_seed(m)) for m in members]
    active = list(range(len(members)))  # stack row -> member index
    tracks = [_Track() for _ in members]
    batches = _batches(len(x), cfg.batch_size)
    xs = [x[sl].contiguous() for sl in batches]  # (n, d) and (d, n): both operand layouts of the
    xts = [x[sl].t().contiguous() for sl in batches]  # shared batch, made once
    yts = [y[sl].t().contiguous() for sl in batches]  # (C, n)
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        for b, sl in enumerate(batches):
            bits = _draw_bits([gens[i] for i in active], cfg.hidden_dim, sl.stop - sl.start)
            _train_step(st, xs[b], xts[b], yts[b], bits.to(device), prediction_type, cfg.lr)
        # Lightning validates after epochs 3, 6, ...; a run shorter than one interval checks at
        # its end
        if epoch % cfg.check_every and not (epoch == cfg.max_epochs and epoch < cfg.check_every):
            continue
        with torch.no_grad():
            probs = _probabilities(_eval_logits(_stack_view(st), xv), prediction_type)
        keep = []
        for r, i in enumerate(active):
            score = compute_metrics([metric], probs[r], valid.y)[metric]
            if tracks[i].check(score, epoch, st, r, cfg.patience):
                tracks[i].stopped = epoch
            else:
                keep.append(r)
        if len(keep) < len(active):
            if not keep:
                break
            st.keep(keep)
            active = [active[r] for r in keep]
    for i in active:
        tracks[i].stopped = epoch
    return [
        FitResult(m, t.best, t.best_epoch, t.stopped, t.weights)
        for m, t in zip(members, tracks, strict=True)
    ]


# ---- the grid and the folds (the kit's task_predictions) -----------------------------------------
def grid_order(dropouts: tuple[float, ...], seed: int) -> list[float]:
    """The kit's grid order for ``seed``: ``random.shuffle`` after ``seed_everything(seed)``."""
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
    if cfg.fold_streams not in ("independent", "restart"):
        raise ValueError(
            f"fold_streams must be 'independent' or 'restart', got {cfg.fold_streams!r}"
        )
    out: list[list[ProbeResult]] = [[] for _ in seeds]
    chosen: list[float] = []
    for f, (train, valid, test) in enumerate(folds):
        if cfg.standardize:
            xs = standardize(train.x, valid.x, test.x)
            train, valid, test = (
                ProbeData(a, d.y) for a, d in zip(xs, (train, valid, test), strict=True)
            )
        stream = f if cfg.fold_streams == "independent" else 0
        if f == 0:
            members = [Member(s, p, stream) for s in seeds for p in cfg.dropouts]
        else:
            members = [Member(s, p, stream) for s, p in zip(seeds, chosen, strict=True)]
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
