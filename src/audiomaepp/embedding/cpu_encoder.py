"""The encoder for feature extraction on a CPU: oneDNN linears with fused epilogues, or int8.

Profiling the eager fp32 encoder (tiny, 64 chunks, 2 threads) showed ~50 % of the time in the
matmuls, and the rest in work around them: the bias copy of ``addmm`` (13 %), SiLU (10 %), the
SwiGLU product (6 %), residual adds (4 %) and LayerNorms (6 %), each a full pass over memory.
:class:`FusedEncoder` runs each ``nn.Linear`` as one oneDNN call with its bias and the work that
follows it fused into the epilogue, on weights packed once:

    ffn1:   fc1 + SiLU,        fc2 (weights pre-scaled by 0.5) + residual add
    attn:   qkv,               proj + residual add
    SwiGLU: gate + SiLU,       value * silu(gate) (a binary epilogue),  proj + residual add
    vanilla MLP: fc1 + GELU,   fc2 + residual add

On AMD CPUs oneDNN's fp32 matmul is also ~2x MKL's (which ``nn.Linear`` uses). The same code runs
in bf16 (weights and activations bf16, LayerNorm and softmax accumulating in fp32 inside their
kernels); outputs are float32. ``int8`` is PyTorch's dynamic quantisation of every linear
(per-channel int8 weights, activations quantised per call), run by fbgemm's VNNI kernels.

Numbers: fp32 equals the eager encoder to ~2e-6 (relative); bf16 and int8 errors are in
``benchmarks/README.md`` and checked by ``tests/test_precision.py``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..model.layers import (
    Attention,
    Mlp,
    PlusPlusBlock,
    SwiGLU,
    VanillaBlock,
    apply_rope,
    rope_tables,
)
from ..model.mae import Encoder

__all__ = ["FusedEncoder", "fused_available", "quantize_int8", "chunk_encoder", "DTYPES"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_ONEDNN = getattr(torch.ops, "mkldnn", None)


def fused_available() -> bool:
    """oneDNN's fused linear ops exist in this torch build (x86 and ARM builds have them)."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(_ONEDNN, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


class _Linear:
    """One ``nn.Linear`` as a packed oneDNN weight; ``scale`` multiplies weight and bias."""

    def __init__(self, lin: nn.Linear, dtype: torch.dtype, rows: int, scale: float = 1.0) -> None:
        weight = (lin.weight.detach().float() * scale).to(dtype)
        self.bias = None if lin.bias is None else (lin.bias.detach().float() * scale).to(dtype)
        # packed for ``rows`` input rows (a full batch); other row counts run on the same weights
        self.weight = _ONEDNN._reorder_linear_weight(weight, rows)

    def __call__(self, x: torch.Tensor, act: str = "none", algorithm: str = "") -> torch.Tensor:
        return _ONEDNN._linear_pointwise(x, self.weight, self.bias, act, [], algorithm)

    def then(self, x: torch.Tensor, other: torch.Tensor, op: str) -> torch.Tensor:
        """``linear(x) <op> other`` in one call (``op``: ``add`` or ``mul``)."""
        return _ONEDNN._linear_pointwise.binary(x, other, self.weight, self.bias, op)


class _Norm:
    def __init__(self, norm: nn.LayerNorm, dtype: torch.dtype) -> None:
        self.weight = norm.weight.detach().to(dtype)
        self.bias = norm.bias.detach().to(dtype)
        self.eps = norm.eps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class _Attention:
    """Self-attention; in bf16 as two batched matmuls around a softmax, with the
    ``head_dim ** -0.5`` scale folded into the query weights: measured faster than
    ``scaled_dot_product_attention``'s CPU flash kernel in bf16 (1.3-1.5x, tiny, 1 thread),
    slower in fp32 (where the flash kernel is kept)."""

    def __init__(self, attn: Attention, dtype: torch.dtype, rows: int) -> None:
        self.heads, self.head_dim = attn.num_heads, attn.head_dim
        self.explicit = dtype == torch.bfloat16
        qkv = attn.qkv
        if self.explicit:  # scale the query rows of the fused projection
            qkv = copy.deepcopy(qkv)
            with torch.no_grad():
                dim = qkv.weight.shape[1]
                qkv.weight[:dim] *= self.head_dim**-0.5
                qkv.bias[:dim] *= self.head_dim**-0.5
        self.qkv = _Linear(qkv, dtype, rows)
        self.proj = _Linear(attn.proj, dtype, rows)

    def add_to(self, x: torch.Tensor, residual: torch.Tensor, rope) -> torch.Tensor:
        """``residual + Attn(x)``; ``x`` ``(B, N, D)`` already normalised."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.explicit:
            weights = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # (B, H, N, N)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd)
        return self.proj.then(out.transpose(1, 2).reshape(B, N, D), residual, "add")


class _PlusPlus:
    """:class:`~audiomaepp.model.layers.PlusPlusBlock` with fused epilogues."""

    def __init__(self, block: PlusPlusBlock, dtype: torch.dtype, rows: int) -> None:
        ffn1: Mlp = block.ffn1
        ffn2: SwiGLU = block.ffn2
        self.norm1, self.norm2 = _Norm(block.norm1, dtype), _Norm(block.norm2, dtype)
        self.norm_sw = self.norm2 if block.swiglu_norm == "ln2" else _Norm(block.norm3, dtype)
        self.fc1 = _Linear(ffn1.fc1, dtype, rows)
        self.fc2_half = _Linear(ffn1.fc2, dtype, rows, scale=0.5)  # the macaron half step
        self.attn = _Attention(block.attn, dtype, rows)
        self.gate, self.value = _Linear(ffn2.gate, dtype, rows), _Linear(ffn2.value, dtype, rows)
        self.inner_norm = _Norm(ffn2.norm, dtype)
        self.proj = _Linear(ffn2.proj, dtype, rows)

    def __call__(self, x: torch.Tensor, rope) -> torch.Tensor:
        x = self.fc2_half.then(self.fc1(self.norm1(x), "swish"), x, "add")
        x = self.attn.add_to(self.norm2(x), x, rope)
        y = self.norm_sw(x)
        hidden = self.value.then(y, self.gate(y, "swish"), "mul")  # silu(gate y) * value y
        return self.proj.then(self.inner_norm(hidden), x, "add")


class _Vanilla:
    """:class:`~audiomaepp.model.layers.VanillaBlock` with fused epilogues."""

    def __init__(self, block: VanillaBlock, dtype: torch.dtype, rows: int) -> None:
        self.norm1, self.norm2 = _Norm(block.norm1, dtype), _Norm(block.norm2, dtype)
        self.attn = _Attention(block.attn, dtype, rows)
        self.fc1 = _Linear(block.mlp.fc1, dtype, rows)
        self.fc2 = _Linear(block.mlp.fc2, dtype, rows)

    def __call__(self, x: torch.Tensor, rope) -> torch.Tensor:
        x = self.attn.add_to(self.norm1(x), x, rope)
        return self.fc2.then(self.fc1(self.norm2(x), "gelu", "none"), x, "add")


class FusedEncoder:
    """Inference-only copy of an :class:`Encoder` on the CPU: log-mel ``(B, 1, 200, 80)`` ->
    tokens ``(B, 1 + L, D)`` float32, in ``dtype`` (float32 or bfloat16) inside.

    ``rows_hint``: encoder batch size the weights are packed for (any batch size runs)."""

    def __init__(self, encoder: Encoder, dtype: torch.dtype, batch_hint: int = 64) -> None:
        if not fused_available():
            raise RuntimeError("this torch build has no oneDNN (mkldnn) fused linear ops")
        cfg = encoder.cfg
        self.dtype = dtype
        self.patch_embed = encoder.patch_embed  # a conv over the input: fp32, ~1 % of the FLOPs
        self.pos = encoder.pos_embed.detach()
        self.cls = (encoder.cls_token + encoder.pos_embed[:, :1]).detach()
        rows = batch_hint * (1 + cfg.num_patches)
        kind = _PlusPlus if cfg.block == "plusplus" else _Vanilla
        self.blocks = [kind(b, dtype, rows) for b in encoder.blocks]
        self.rope = cfg.encoder_rope != "none"  # unmasked: grid positions equal sequence positions
        self.head_dim = cfg.embed_dim // cfg.num_heads
        self.norm = _Norm(encoder.norm, dtype)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x) + self.pos[:, 1:]  # (B, L, D)
        h = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1).to(self.dtype)
        rope = rope_tables(torch.arange(h.shape[1]), self.head_dim) if self.rope else None
        for block in self.blocks:
            h = block(h, rope)
        return self.norm(h).float()


def quantize_int8(encoder: Encoder) -> nn.Module:
    """A copy of ``encoder`` whose linears are int8 dynamically quantised (per output channel)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(
            copy.deepcopy(encoder).float().eval(),
            {nn.Linear: per_channel_dynamic_qconfig},
            dtype=torch.qint8,
        )


def uses_fused(device: torch.device, precision: str, fused: bool | None, compile: bool | None):
    """Whether :func:`chunk_encoder` takes the oneDNN path (CPU, fp32 / bf16, not compiled)."""
    if device.type != "cpu" or precision not in ("float32", "bfloat16") or compile:
        return False
    return fused if fused is not None else fused_available()


def chunk_encoder(
    encoder: Encoder,
    precision: str,
    batch_hint: int = 64,
    fused: bool | None = None,
    compile: bool | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function that encodes log-mel chunks ``(b, 1, 200, 80)`` -> tokens ``(b, 1 + L, D)``
    on ``encoder``'s device in ``precision`` (resolved, not ``auto``): the fused oneDNN encoder
    on CPU (fp32 / bf16), int8 dynamic quantisation (CPU), or the module itself, compiled when
    asked (default: on CUDA) and under autocast for bf16 / fp16. Built on call: weights are
    copied as they are now."""
    device = next(encoder.parameters()).device
    if uses_fused(device, precision, fused, compile):
        return FusedEncoder(encoder, DTYPES[precision], batch_hint)
    if precision == "int8":
        return quantize_int8(encoder)
    module: nn.Module = encoder
    if compile if compile is not None else device.type == "cuda":
        module = torch.compile(encoder)  # recompiles once for a ragged last batch
    if precision == "float32":
        return module
    autocast_dtype = DTYPES[precision]

    def run(chunks: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=autocast_dtype):
            return module(chunks)

    return run
