"""Model directories on the Hugging Face Hub: load by repo id, push with a generated model card.

A Hub repo holds exactly what :func:`~audiomaepp.model.io.save_pretrained` writes
(``model.safetensors`` + ``config.json``, a classifier's ``labels.json``) plus a ``README.md`` model
card. Downloads go through ``huggingface_hub``'s cache, so ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE``
work as everywhere else. The Hub code sits beside the model-directory reader it feeds (as timm's
``models/_hub.py``): ``AudioMAE.from_pretrained`` and ``push_to_hub`` reach it without leaving the
model layer; :mod:`audiomaepp.export.hub` re-exports it for deployment scripts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError, ModelSpecError
from .spec import REPO_ID, parse_model_spec

__all__ = ["REPO_ID", "resolve_model_dir", "push_to_hub", "model_card"]

CARD_NAME = "README.md"
# what a model directory holds (model.io): weights, config.json (+ a classifier's labels.json), card
HUB_FILES = ["*.safetensors", "*.json", CARD_NAME]


def resolve_model_dir(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local model directory as is, or a Hub repo id (``owner/name``) fetched into the Hub cache
    (only the weights, JSON files and card); the returned folder holds ``model.safetensors``."""
    spec = parse_model_spec(name_or_path)
    if spec.kind == "folder":
        return Path(spec.target).resolve()
    if spec.kind != "hub":
        raise ModelSpecError(f"model {str(spec)!r}: names no model directory to load")
    text = spec.target
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            text,
            revision=revision,
            allow_patterns=HUB_FILES,
            library_name="audiomaepp",
        )
    except Exception as exc:  # offline without a cached copy, unknown repo, no network, ...
        raise CheckpointError(
            f"{text}: no such local folder, and the Hugging Face Hub repo could not be fetched "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return Path(local)


def model_card(model: torch.nn.Module, repo_id: str) -> str:
    """A README.md for the Hub: metadata, the architecture and how to load it."""
    cfg = model.config
    params = sum(p.numel() for p in model.encoder.parameters())
    mparams = params / 1e6
    extra = "".join(f"| {k} | `{v}` |\n" for k, v in sorted(cfg.extra.items())) if cfg.extra else ""
    return f"""---
library_name: audiomaepp
tags: [audio, audio-classification, self-supervised-learning, masked-autoencoder, audiomaepp]
pipeline_tag: feature-extraction
---

# {repo_id}

An AudioMAE++ encoder (Yadav et al., MLSP 2025): a masked autoencoder on 16 kHz, 80-bin log-mel
patches of 4 frames x 16 bins, made with [audiomaepp](https://pypi.org/project/audiomaepp/).
Files: `model.safetensors` (weights, no pickle) and `config.json` (the architecture).

| field | value |
|---|---|
| blocks | `{cfg.block}` (decoder `{cfg.decoder_block}`) |
| encoder | {cfg.depth} x {cfg.embed_dim} wide, {cfg.num_heads} heads ({mparams:.1f} M parameters) |
| decoder | {cfg.decoder_depth} x {cfg.decoder_embed_dim} wide |
| SwiGLU input norm | `{cfg.swiglu_norm}` |
| RoPE (encoder / decoder) | `{cfg.encoder_rope}` / `{cfg.decoder_rope}` |
| token layout of timestamp embeddings | `{cfg.token_layout}` |
| embedding size (scene and timestamp) | {cfg.grid_size[1] * cfg.embed_dim} |
{extra}
## Use

```python
from audiomaepp import AudioMAE, hear

model = AudioMAE.from_pretrained("{repo_id}")             # the full masked autoencoder
embedder = hear.load_model("{repo_id}", device="cpu")     # HEAR API: scene / timestamp embeddings
```

```bash
audiomaepp embed {repo_id} recordings/ --out emb/
audiomaepp export-onnx {repo_id} model.onnx
```
"""


def push_to_hub(
    model: torch.nn.Module,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload AudioMAE++ model",
    revision: str | None = None,
) -> str:
    """Write ``model`` as a model directory with a model card and upload it to ``repo_id``
    (created if needed). Returns the commit URL."""
    from huggingface_hub import HfApi

    if not REPO_ID.match(repo_id):
        raise ValueError(f"repo id {repo_id!r}: expected owner/name")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # model.io's one writer, via the model's own method
        (Path(tmp) / CARD_NAME).write_text(model_card(model, repo_id))
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision
        )
    return str(getattr(info, "commit_url", info))
