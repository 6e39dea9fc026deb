"""Building blocks: attention (SDPA) with optional RoPE, FFNs, and the two block types (spec §3).

Tensor names: ``B`` batch, ``N`` tokens, ``D`` width, ``H`` heads, ``hd`` head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6  # every LayerNorm of the release


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LN_EPS)


# ---- rotary position embedding -------------------------------------------------------------------
def rope_freqs(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Angular rate of each channel pair ``(2i, 2i+1)``: ``base^(-2i/hd)``, shape ``(hd/2,)``."""
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def rope_tables(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin tables for integer ``positions`` ``(N,)`` or ``(B, N)``.

    Returns each as ``(B|1, 1, N, hd/2)``.
    """
    freqs = rope_freqs(head_dim).to(positions.device)
    angles = positions.float().unsqueeze(-1) * freqs  # (..., N, hd/2)
    if angles.ndim == 2:
        angles = angles.unsqueeze(0)
    angles = angles.unsqueeze(1)  # broadcast over heads
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` ``(B, H, N, hd)`` by the given angles."""
    x_even, x_odd = x.float()[..., 0::2], x.float()[..., 1::2]  # (B, H, N, hd/2)
    rotated = torch.stack((x_even * cos - x_odd * sin, x_odd * cos + x_even * sin), dim=-1)
    return rotated.flatten(-2).type_as(x)


# ---- attention and feed-forward layers -----------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention: fused ``qkv`` projection, SDPA kernel, scale ``hd ** -0.5``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    """``Linear(D, h) -> act -> Linear(h, D)``: GELU in the vanilla block, SiLU as macaron FFN1."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """``proj(LN(silu(gate(x)) * value(x)))``, hidden ``int(4 D * 2/3)``, a LayerNorm inside."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.value = nn.Linear(dim, hidden)  # release: ffn2.linear1
        self.gate = nn.Linear(dim, hidden)  # release: ffn2.linear2 (the SiLU branch)
        self.norm = layer_norm(hidden)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(F.silu(self.gate(x)) * self.value(x)))


# ---- blocks --------------------------------------------------------------------------------------
class VanillaBlock(nn.Module):
    """MAE/ViT block: ``x + Attn(LN1 x)``, then ``x + MLP(LN2 x)`` with GELU."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), nn.GELU)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class PlusPlusBlock(nn.Module):
    """Macaron transformer++ block: half-step SiLU FFN, attention, SwiGLU FFN.

    ``swiglu_norm="ln2"`` reproduces the release, which normalises the SwiGLU input with LN2 again
    and leaves ``norm3`` unused (it is kept so checkpoints and parameter counts match, and frozen so
    optimizers and DDP ignore it); ``"ln3"`` is the corrected wiring.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, swiglu_norm: str = "ln2"
    ) -> None:
        super().__init__()
        self.swiglu_norm = swiglu_norm
        self.norm1 = layer_norm(dim)
        self.ffn1 = Mlp(dim, int(dim * mlp_ratio), nn.SiLU)
        self.norm2 = layer_norm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm3 = layer_norm(dim)
        self.ffn2 = SwiGLU(dim, int(mlp_ratio * dim * 2 / 3))
        if swiglu_norm == "ln2":
            self.norm3.requires_grad_(False)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(self.norm1(x))
        x = x + self.attn(self.norm2(x), rope)
        norm = self.norm2 if self.swiglu_norm == "ln2" else self.norm3
        return x + self.ffn2(norm(x))


def make_block(
    kind: str, dim: int, num_heads: int, mlp_ratio: float, swiglu_norm: str
) -> nn.Module:
    if kind == "plusplus":
        return PlusPlusBlock(dim, num_heads, mlp_ratio, swiglu_norm)
    return VanillaBlock(dim, num_heads, mlp_ratio)


class BlockStack(nn.ModuleList):
    """A sequence of blocks sharing one RoPE table (identical per block, computed once per call)."""

    def __init__(
        self,
        kind: str,
        depth: int,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        swiglu_norm: str,
        rope: str,
    ) -> None:
        super().__init__(
            make_block(kind, dim, num_heads, mlp_ratio, swiglu_norm) for _ in range(depth)
        )
        self.rope = rope
        self.head_dim = dim // num_heads

    def forward(self, x: torch.Tensor, grid_positions: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, N, D)``; ``grid_positions`` ``(B, N)``: true positions, for rope="grid"."""
        rope = None
        if self.rope == "sequence" or (self.rope == "grid" and grid_positions is None):
            rope = rope_tables(torch.arange(x.shape[1], device=x.device), self.head_dim)
        elif self.rope == "grid":
            rope = rope_tables(grid_positions, self.head_dim)
        for block in self:
            x = block(x, rope)
        return x
