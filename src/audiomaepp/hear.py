"""The HEAR 2021 module API (https://hearbenchmark.com/hear-api.html) for AudioMAE++.

    from audiomaepp import hear
    model = hear.load_model("path/to/model_dir", layout="release", device="cuda")
    scene = hear.get_scene_embeddings(audio, model)           # (B, 5 D)
    emb, ts = hear.get_timestamp_embeddings(audio, model)     # (B, S, 5 D), (B, S) ms

``audio`` is a float tensor ``(B, N)`` of 16 kHz mono samples in [-1, 1]; outputs are float32 on
the input's device.
"""

from __future__ import annotations

import torch

from .embedding import Embedder

__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings"]


def load_model(model_file_path: str = "", **options) -> Embedder:
    """Load a model directory (``save_pretrained`` / ``convert-release`` output) or a Hugging Face
    Hub repo id (``owner/name``; fetched into the Hub cache, ``HF_HUB_OFFLINE=1`` honoured).

    Options: ``layout`` ("release" | "time_major", default from the model's config), ``device``
    ("auto" | "cpu" | "cuda[:i]"), ``dtype`` ("auto" | "float32" | "bfloat16" | "float16" |
    "int8"; auto: bf16 on CUDA and on CPUs with native bf16 matmul, else float32; the model's
    ``precision`` says which runs), ``batch_size`` (2-s chunks per encoder call), ``compile``
    (default: on CUDA), ``fused`` (oneDNN-fused CPU encoder, default on). With an empty path,
    ``preset="tiny"`` (etc.) gives a randomly initialised model, for plumbing tests only.
    """
    allowed = {"layout", "device", "dtype", "batch_size", "compile", "fused", "preset", "seed"}
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(
            f"load_model: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    names = ("device", "dtype", "batch_size", "compile", "fused")
    kw = {k: options[k] for k in names if k in options}
    if model_file_path:
        return Embedder.from_dir(model_file_path, layout=options.get("layout"), **kw)
    if "preset" not in options:
        raise ValueError(
            "load_model: pass a model directory (made by save_pretrained or "
            "`audiomaepp convert-release`); "
            "no weights ship with the package. Use preset=NAME for a random-init model."
        )
    layout = {"token_layout": options["layout"]} if "layout" in options else {}
    return Embedder.random_init(options["preset"], seed=options.get("seed", 0), **kw, **layout)


def get_timestamp_embeddings(
    audio: torch.Tensor, model: Embedder
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings every 40 ms, ``(B, S, model.timestamp_embedding_size)``, and their times in ms."""
    return model.timestamp_embeddings(audio)


def get_scene_embeddings(audio: torch.Tensor, model: Embedder) -> torch.Tensor:
    """One embedding per clip, ``(B, model.scene_embedding_size)``: the mean over time steps."""
    return model.scene_embeddings(audio)
