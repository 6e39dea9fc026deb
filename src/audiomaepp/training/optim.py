"""AdamW with MAE's weight-decay groups (spec §6).

Decay applies to matrices and other >= 2-D tensors (linear / conv weights, cls and mask tokens);
biases and 1-D parameters (LayerNorm weights) get none. Parameters with ``requires_grad=False``
(the fixed sin-cos tables, the release's unused LN3) are left out entirely, so neither AdamW nor
DDP ever sees them and DDP needs no ``find_unused_parameters``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Whether ``param`` is exempt from weight decay: biases and 1-D tensors."""
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups, ``decay`` then ``no_decay``; each carries its parameter ``names``."""
    decay: dict[str, nn.Parameter] = {}
    plain: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # frozen: not optimised, not reduced by DDP
        (plain if no_decay(name, p) else decay)[name] = p
    return [
        {"params": list(decay.values()), "names": list(decay), "weight_decay": weight_decay},
        {"params": list(plain.values()), "names": list(plain), "weight_decay": 0.0},
    ]


def adamw(
    groups: list[dict[str, Any]],
    lr: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    fused: bool = False,
) -> torch.optim.AdamW:
    """The one AdamW of the loop over ready-made ``groups`` (pretraining's :func:`param_groups`,
    fine-tuning's layer-decay groups); ``fused=True`` uses the single-kernel implementation
    (CUDA), which also lets the non-finite guard skip a step on the device."""
    kwargs: dict[str, Any] = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool = False,
) -> torch.optim.AdamW:
    """:func:`adamw` over :func:`param_groups` (pretraining's decay / no-decay split)."""
    return adamw(param_groups(model, weight_decay), lr, betas, eps, fused)


def optimizer_param_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's index order (the order of its state dict)."""
    return [name for group in optimizer.param_groups for name in group["names"]]


def trainable_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter the optimizer updates, in index order."""
    return [p for group in optimizer.param_groups for p in group["params"]]
