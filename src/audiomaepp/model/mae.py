"""The masked autoencoder: patch embedding, random masking, encoder, decoder and loss (spec §2-§5).

Shapes: ``x`` standardised log-mel ``(B, 1, 200, 80)``; ``L = 250`` patches in time-major order
(index ``t * 5 + f``); ``K = 50`` kept patches; ``D`` encoder width; ``Dd`` decoder width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import AudioMAEConfig
from .hub import push_to_hub
from .io import FORMAT, load_model_dir, save_pretrained
from .layers import BlockStack, layer_norm
from .pos_embed import sincos_2d, sincos_seq


@dataclass
class MAEOutput:
    """What a pretraining forward pass returns."""

    loss: torch.Tensor  # () mean squared error over masked patches
    pred: torch.Tensor  # (B, L, 64) reconstructed patches, all positions
    mask: torch.Tensor  # (B, L) 1 = removed (predicted), 0 = kept
    latent: torch.Tensor  # (B, 1 + K, D) encoder output for cls + kept patches (noise order)
    ids_restore: torch.Tensor  # (B, L) un-shuffle index


def patchify(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """``(B, 1, T, F)`` -> ``(B, L, pt*pf)``: patches time-major, each flattened time then freq."""
    B, C, T, Fq = x.shape
    pt, pf = patch
    x = x.reshape(B, C, T // pt, pt, Fq // pf, pf)  # (B, C, gt, pt, gf, pf)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gt, gf, pt, pf, C)
    return x.reshape(B, (T // pt) * (Fq // pf), pt * pf * C)


def unpatchify(
    patches: torch.Tensor, grid: tuple[int, int], patch: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`patchify` for one channel: ``(B, L, pt*pf)`` -> ``(B, 1, T, F)``."""
    B = patches.shape[0]
    (gt, gf), (pt, pf) = grid, patch
    x = patches.reshape(B, gt, gf, pt, pf).permute(0, 1, 3, 2, 4)  # (B, gt, pt, gf, pf)
    return x.reshape(B, 1, gt * pt, gf * pf)


def random_masking(
    tokens: torch.Tensor, num_keep: int, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``num_keep`` tokens with the lowest noise, in noise order (MAE's shuffle).

    ``tokens`` ``(B, L, D)``, ``noise`` ``(B, L)`` (uniform if None). Returns kept tokens
    ``(B, K, D)``, the binary mask ``(B, L)`` (1 = removed), ``ids_restore`` ``(B, L)`` and
    ``ids_keep`` ``(B, K)``.
    """
    B, L, D = tokens.shape
    if noise is None:
        noise = torch.rand(B, L, device=tokens.device)
    elif noise.shape != (B, L):
        raise ValueError(f"noise must have shape {(B, L)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :num_keep]
    kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = torch.ones(B, L, device=tokens.device, dtype=tokens.dtype)
    mask[:, :num_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return kept, mask, ids_restore, ids_keep


class PatchEmbed(nn.Module):
    """Non-overlapping 4x16 patches -> ``D`` channels, flattened time-major: ``(B, L, D)``."""

    def __init__(self, cfg: AudioMAEConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, 50, 5) -> (B, 250, D)


class Encoder(nn.Module):
    """ViT encoder over patches with a cls token and a fixed 2-D sin-cos table."""

    def __init__(self, cfg: AudioMAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        table = sincos_2d(cfg.embed_dim, cfg.grid_size)  # (1 + L, D)
        self.pos_embed = nn.Parameter(table.unsqueeze(0), requires_grad=False)
        self.blocks = BlockStack(
            cfg.block,
            cfg.depth,
            cfg.embed_dim,
            cfg.num_heads,
            cfg.mlp_ratio,
            cfg.swiglu_norm,
            cfg.encoder_rope,
        )
        self.norm = layer_norm(cfg.embed_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with positions, ``(B, L, D)``."""
        return self.patch_embed(x) + self.pos_embed[:, 1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature extraction (no masking): log-mel ``(B, 1, 200, 80)`` -> ``(B, 1 + L, D)``."""
        return self.run(self.embed(x))

    def run(self, tokens: torch.Tensor, patch_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Prepend cls, run the blocks and the final norm: ``(B, N, D)`` -> ``(B, 1 + N, D)``.

        ``patch_ids`` ``(B, N)`` are the tokens' raster indices (for ``rope="grid"``).
        """
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        grid_pos = None
        if self.cfg.encoder_rope == "grid" and patch_ids is not None:
            grid_pos = torch.cat([torch.zeros_like(patch_ids[:, :1]), patch_ids + 1], dim=1)
        return self.norm(self.blocks(x, grid_pos))


class Decoder(nn.Module):
    """Light decoder: project, add mask tokens, un-shuffle, 1-D sin-cos table, blocks, predict."""

    def __init__(self, cfg: AudioMAEConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        table = sincos_seq(cfg.decoder_embed_dim, cfg.num_patches)  # (1 + L, Dd)
        self.pos_embed = nn.Parameter(table.unsqueeze(0), requires_grad=False)
        self.blocks = BlockStack(
            cfg.decoder_block,
            cfg.decoder_depth,
            cfg.decoder_embed_dim,
            cfg.decoder_num_heads,
            cfg.mlp_ratio,
            cfg.swiglu_norm,
            cfg.decoder_rope,
        )
        self.norm = layer_norm(cfg.decoder_embed_dim)
        self.pred = nn.Linear(cfg.decoder_embed_dim, cfg.patch_dim)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``latent`` ``(B, 1 + K, D)`` -> predicted patches ``(B, L, 64)``."""
        x = self.embed(latent)  # (B, 1 + K, Dd)
        B, L = ids_restore.shape
        fill = self.mask_token.to(x.dtype).expand(B, L - (x.shape[1] - 1), -1)
        x_ = torch.cat([x[:, 1:], fill], dim=1)  # (B, L, Dd) in shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1) + self.pos_embed  # (B, 1 + L, Dd), raster order
        # In raster order the sequence index equals the grid position, so "grid" == "sequence" here.
        x = self.norm(self.blocks(x))
        return self.pred(x)[:, 1:]


class AudioMAE(nn.Module):
    """AudioMAE++ (``block="plusplus"``) or the vanilla MAE baseline (``block="vanilla"``)."""

    def __init__(self, config: AudioMAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.init_weights()

    # ---- init (spec §3) ------------------------------------------------------------------------
    def init_weights(self) -> None:
        nn.init.xavier_uniform_(
            self.encoder.patch_embed.proj.weight
        )  # 4-D as is: fan_in 64, fan_out 64 D
        nn.init.zeros_(self.encoder.patch_embed.proj.bias)
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.decoder.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ---- forward passes -------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x, self.config.patch_size)

    def check_input(self, x: torch.Tensor) -> None:
        want = (self.config.in_chans, *self.config.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                "AudioMAE expects standardised log-mel of shape "
                f"(B, {want[0]}, {want[1]}, {want[2]}), "
                f"got {tuple(x.shape)}"
            )

    def forward_encoder(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked encoding: latent ``(B, 1 + K, D)``, mask ``(B, L)``, ids_restore ``(B, L)``."""
        tokens = self.encoder.embed(x)  # (B, L, D)
        kept, mask, ids_restore, ids_keep = random_masking(tokens, self.config.num_keep, noise)
        return self.encoder.run(kept, ids_keep), mask, ids_restore

    def loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over masked patches of the per-patch MSE (spec §5)."""
        target = self.patchify(x)
        if self.config.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> MAEOutput:
        """Pretraining step: mask, encode, decode, loss. ``noise`` ``(B, 250)`` fixes the mask."""
        self.check_input(x)
        latent, mask, ids_restore = self.forward_encoder(x, noise)
        pred = self.decoder(latent, ids_restore)
        return MAEOutput(self.loss(x, pred, mask), pred, mask, latent, ids_restore)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """All 250 patch tokens without masking, cls dropped, time-major: ``(B, L, D)``."""
        self.check_input(x)
        return self.encoder(x)[:, 1:]

    forward_features = encode  # timm-style alias

    # ---- bookkeeping ---------------------------------------------------------------------------
    def num_params(self, encoder_only: bool = False) -> int:
        """Parameters including the fixed position tables and the unused LN3, as the spec counts."""
        module = self.encoder if encoder_only else self
        return sum(p.numel() for p in module.parameters())

    def encoder_flops_per_chunk(self) -> float:
        """Matmul FLOPs of feature extraction for a 2-s chunk: unmasked encoder, 1 + 250 tokens."""
        return encoder_flops(self.config)

    def flops_per_sample(self) -> float:
        """Approximate training FLOPs per sample (forward + backward = 3x forward matmuls)."""
        return 3.0 * _forward_flops(self.config)

    # ---- persistence (io.py: the one model-directory writer and reader; hub.py: the Hub) ---------
    def save_pretrained(self, directory: str | Path) -> Path:
        """``model.safetensors`` + ``config.json`` in ``directory``."""
        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device = "cpu"
    ) -> AudioMAE:
        """A model directory, or a Hugging Face Hub repo id (``owner/name``, via the Hub cache)."""
        return load_model_dir(
            directory, lambda config, _: cls(AudioMAEConfig.from_dict(config)), FORMAT, map_location
        )

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload as a model directory with a generated model card (see :mod:`.hub`)."""
        return push_to_hub(self, repo_id, **kwargs)


def _stack_flops(depth: int, dim: int, tokens: int, block: str, mlp_ratio: float) -> float:
    """Matmul FLOPs (2 per multiply-add) of one forward pass through a block stack."""
    hidden = int(mlp_ratio * dim)
    attn = 2 * tokens * dim * 3 * dim + 2 * tokens * dim * dim + 2 * 2 * tokens * tokens * dim
    if block == "plusplus":
        sw = int(mlp_ratio * dim * 2 / 3)
        ffn = 2 * 2 * tokens * dim * hidden + 3 * 2 * tokens * dim * sw
    else:
        ffn = 2 * 2 * tokens * dim * hidden
    return depth * (attn + ffn)


def encoder_flops(cfg: AudioMAEConfig) -> float:
    """Matmul FLOPs of the unmasked encoder on one input: patch embedding, then 1 + L tokens."""
    patch = 2 * cfg.num_patches * cfg.patch_dim * cfg.embed_dim
    blocks = _stack_flops(cfg.depth, cfg.embed_dim, 1 + cfg.num_patches, cfg.block, cfg.mlp_ratio)
    return float(patch + blocks)


def _forward_flops(cfg: AudioMAEConfig) -> float:
    enc_tokens, dec_tokens = 1 + cfg.num_keep, 1 + cfg.num_patches
    patch = 2 * cfg.num_patches * cfg.patch_dim * cfg.embed_dim
    enc = _stack_flops(cfg.depth, cfg.embed_dim, enc_tokens, cfg.block, cfg.mlp_ratio)
    dec = _stack_flops(
        cfg.decoder_depth, cfg.decoder_embed_dim, dec_tokens, cfg.decoder_block, cfg.mlp_ratio
    )
    head = (
        2 * enc_tokens * cfg.embed_dim * cfg.decoder_embed_dim
        + 2 * dec_tokens * cfg.decoder_embed_dim * cfg.patch_dim
    )
    return float(patch + enc + dec + head)


__all__ = [
    "AudioMAE",
    "MAEOutput",
    "patchify",
    "unpatchify",
    "random_masking",
    "encoder_flops",
]
