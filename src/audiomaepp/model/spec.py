"""What a user may name as a model, parsed in one place (``--model``, ``--models``, ``embed``, ...).

- a model folder: ``save_pretrained`` / ``convert-release`` output, or a finished run's ``model/``;
- a Hugging Face Hub repo id ``owner/name`` (when no such folder exists);
- ``random:<preset>``: a randomly initialised model of a preset, the 'no pretraining' baseline;
- a name in ``baselines``: models that are no AudioMAE, added by a layer above without parsing
  anew (evaluation adds ``logmel``).

The report row of a model is :attr:`ModelSpec.name`, the one naming rule.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelSpecError
from .config import PRESETS

__all__ = ["REPO_ID", "ModelSpec", "parse_model_spec"]

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")  # owner/name
RANDOM_PREFIX = "random:"
KINDS = ("folder", "hub", "random", "baseline")


@dataclass(frozen=True)
class ModelSpec:
    """One parsed model name: ``kind`` (one of :data:`KINDS`) and ``target``: the folder as given,
    the repo id, the preset or the baseline's name."""

    kind: str
    target: str

    @property
    def name(self) -> str:
        """The model's row label in reports and its embeddings' cache name: ``random-<preset>``,
        a Hub repo's name, a baseline's name, or a folder's name (its run's for ``RUN/model``)."""
        if self.kind == "random":
            return "random-" + self.target
        if self.kind == "hub":
            return self.target.rsplit("/", 1)[-1]
        if self.kind == "baseline":
            return self.target
        folder = Path(self.target).resolve()
        return folder.parent.name if folder.name == "model" else folder.name

    def __str__(self) -> str:
        return RANDOM_PREFIX + self.target if self.kind == "random" else self.target


def parse_model_spec(text: str | Path, baselines: Collection[str] = ()) -> ModelSpec:
    """Parse ``text`` in this order: a baseline name, ``random:<preset>``, an existing folder, a Hub
    repo id; anything else raises :class:`~audiomaepp.errors.ModelSpecError`."""
    text = str(text)
    if text in baselines:
        return ModelSpec("baseline", text)
    if text.startswith(RANDOM_PREFIX):
        preset = text[len(RANDOM_PREFIX) :]
        if not preset:
            raise ModelSpecError(f"model {text!r}: expected random:<preset>, e.g. random:base")
        if preset not in PRESETS:
            raise ModelSpecError(
                f"model {text!r}: unknown preset {preset!r}; choose from {', '.join(PRESETS)}"
            )
        return ModelSpec("random", preset)
    path = Path(text)
    if path.is_dir():
        return ModelSpec("folder", text)
    if REPO_ID.match(text) and not path.exists():
        return ModelSpec("hub", text)
    others = "".join(f"not {b!r}, " for b in baselines)
    raise ModelSpecError(
        f"model {text!r}: {others}not 'random:<preset>', not a model directory and not a Hub "
        "repo id (owner/name)"
    )
