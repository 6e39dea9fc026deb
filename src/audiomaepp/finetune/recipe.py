"""Named fine-tuning recipes and the rule that picks one by training-set size.

MAE's fine-tuning recipe (5 warm-up epochs, blr 1e-3, mixup 0.5, 30-bin frequency masks) is
written for AudioSet: hundreds of thousands of steps. Applied unchanged to a few hundred clips it
runs 60-180 steps, most of them warm-up, on inputs so augmented that the classes blur. The rule:

* ``small`` (fewer than 1 000 training clips: 100-clip tasks, an ESC-50 fold's 1 600 clips is
  ``medium``): at least ``min_steps`` optimizer steps (more epochs), a 10 % warm-up, the head's
  lr ``head_lr_scale`` x the encoder's top block (it starts from scratch, the encoder does not),
  no mixup and light SpecAugment (a 50/50 mixup of two of 100 clips is a new class, not a
  regulariser);
* ``medium`` (1 000 - 100 000): MAE's schedule with a 10 % warm-up, half its mixup probability;
* ``large`` (100 000 and more, AudioSet): MAE's / AudioMAE's recipe as published.

:func:`resolve` fills every :class:`~audiomaepp.finetune.FinetuneConfig` field left at ``None``
from the chosen recipe (a field set by the user is kept), once the training split's size is known.
``benchmarks/finetune_demo.py`` holds the measurements behind the ``small`` values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import RECIPE_NAMES, FinetuneConfig


@dataclass(frozen=True)
class Recipe:
    """One named recipe: the values of the size-dependent fields of :class:`FinetuneConfig`."""

    name: str
    below: int | None  # "auto" picks it for training sets of fewer clips (None: no bound)
    epochs: int  # epochs, raised to reach min_steps
    min_steps: int  # optimizer steps at least (small sets have few steps per epoch)
    warmup_fraction: float  # warm-up epochs = this x epochs
    blr: float  # fine-tuning base lr per 256 samples
    linear_probe_blr: float  # base lr when the encoder is frozen (only the head learns)
    head_lr_scale: float  # head lr / peak lr
    mixup: float  # probability of mixing a crop with another
    freq_mask: int  # SpecAugment: max mel bins zeroed
    time_mask: int  # SpecAugment: max frames zeroed


RECIPES = {
    "small": Recipe("small", 1_000, 30, 300, 0.1, 1e-3, 1e-2, 10.0, 0.0, 8, 20),
    "medium": Recipe("medium", 100_000, 50, 0, 0.1, 1e-3, 1e-2, 1.0, 0.25, 30, 40),
    "large": Recipe("large", None, 50, 0, 0.1, 1e-3, 1e-2, 1.0, 0.5, 30, 40),
}


def choose(name: str, n_train: int) -> Recipe:
    """The recipe called ``name``, or for ``"auto"`` the first whose bound exceeds ``n_train``."""
    if name != "auto":
        if name not in RECIPES:
            raise ValueError(f"FinetuneConfig.recipe={name!r}; choose from {RECIPE_NAMES}")
        return RECIPES[name]
    return next(r for r in RECIPES.values() if r.below is None or n_train < r.below)


def resolve(ft: FinetuneConfig, n_train: int) -> FinetuneConfig:
    """``ft`` with every recipe field it leaves at ``None`` taken from the recipe for ``n_train``.

    The result names the recipe it used (``recipe="small"`` ...), so resolving twice is a no-op.
    """
    r = choose(ft.recipe, n_train)
    loop = ft.loop
    steps_per_epoch = max(1, math.ceil(n_train / loop.batch_size))
    epochs = loop.epochs
    if epochs is None:
        epochs = max(r.epochs, math.ceil(r.min_steps / steps_per_epoch))
    blr = loop.blr
    if blr is None:
        blr = r.linear_probe_blr if ft.linear_probe else r.blr
    warmup = loop.warmup_epochs if loop.warmup_epochs is not None else r.warmup_fraction * epochs
    pick = {  # field -> recipe value, for the fields left at None
        "head_lr_scale": 1.0 if ft.linear_probe else r.head_lr_scale,  # frozen: one lr, the head's
        "mixup": r.mixup,
        "freq_mask": r.freq_mask,
        "time_mask": r.time_mask,
    }
    changes = {k: v for k, v in pick.items() if getattr(ft, k) is None}
    loop = loop.replace(epochs=epochs, warmup_epochs=warmup, blr=blr)
    return ft.replace(recipe=r.name, loop=loop, **changes)
