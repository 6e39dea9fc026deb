"""Flags that several sub-commands share, written once: the encoder precision."""

from __future__ import annotations

import argparse

from ..embedding.precision import PRECISIONS

DTYPE_HELP = (
    "encoder precision; auto: bf16 on CUDA and on CPUs with native bf16 matmul (AMX, "
    "AVX512-BF16), else float32; int8: dynamic quantisation of the linears (CPU)"
)


def add_dtype_flag(p: argparse.ArgumentParser, also: str = "") -> None:
    """``--dtype {auto, float32, bfloat16, float16, int8}`` (default auto); ``also`` extends the
    help with what the choice means for this command."""
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *PRECISIONS],
        help=DTYPE_HELP + (f"; {also}" if also else ""),
    )
