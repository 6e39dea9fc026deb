"""Reconstruction pictures: input log-mel, mask, and the model's reconstruction of one clip.

Rendered with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it is
safe in headless jobs and does not disturb other users of matplotlib in the process.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..fileio import atomic_write_bytes
from ..model import AudioMAE, unpatchify


@torch.no_grad()
def reconstruct(
    model: AudioMAE, x: torch.Tensor, noise: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """One clip ``x`` ``(1, 1, 200, 80)`` -> ``input``, ``mask``, ``recon``, ``pasted``, each
    ``(200, 80)``.

    ``mask`` is 1 where patches were removed; ``pasted`` is the reconstruction with the visible
    patches replaced by the input (what the model actually had to infer stands out).
    """
    cfg = model.config
    was_training = model.training
    model.eval()
    try:
        out = model(x.float(), noise=None if noise is None else noise.float())
    finally:
        model.train(was_training)
    recon = unpatchify(out.pred.float(), cfg.grid_size, cfg.patch_size)  # (1, 1, 200, 80)
    mask_patches = out.mask.float().unsqueeze(-1).expand(-1, -1, cfg.patch_dim)  # (1, L, 64)
    mask = unpatchify(mask_patches, cfg.grid_size, cfg.patch_size)
    x = x.float()
    pasted = x * (1 - mask) + recon * mask
    return {
        k: v[0, 0].cpu()
        for k, v in {"input": x, "mask": mask, "recon": recon, "pasted": pasted}.items()
    }


def save_reconstruction_png(
    path: str | Path, images: dict[str, torch.Tensor], title: str = ""
) -> Path:
    """Four panels (input, masked input, reconstruction, reconstruction + visible) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x, mask = images["input"], images["mask"]
    masked = x.masked_fill(mask.bool(), float("nan"))  # removed patches show as blank
    kept = 100.0 * (1.0 - float(mask.mean()))
    panels = [
        ("input log-mel", x),
        (f"kept patches ({kept:.0f} %)", masked),
        ("reconstruction", images["recon"]),
        ("reconstruction + visible", images["pasted"]),
    ]
    vmin, vmax = float(x.min()), float(x.max())
    fig = Figure(figsize=(12, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels))
    for ax, (name, img) in zip(axes, panels, strict=True):
        ax.imshow(
            img.T.numpy(),
            origin="lower",
            aspect="auto",
            vmin=vmin,
            vmax=vmax,
            cmap="magma",
            interpolation="nearest",
        )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("frame (10 ms)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("mel bin", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path
