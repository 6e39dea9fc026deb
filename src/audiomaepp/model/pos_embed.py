"""Fixed sin-cos position tables (MAE style), computed in float64 and stored as float32."""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``(P,)`` positions -> ``(P, dim)``: ``[sin(p w), cos(p w)]``, ``w_i = 10000^(-2i/dim)``."""
    if dim % 2:
        raise ValueError(f"sin-cos table needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)  # (P, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Table for a ``(rows, cols)`` = (time, freq) grid, raster order ``t * cols + f``.

    The first half of the channels encodes the column (frequency) index, the second the row (time)
    index, matching the release (its grid is built column coordinate first). A zero row is
    prepended for cls. Returns ``(1 + rows*cols, dim)`` float32.
    """
    rows, cols = grid
    t = torch.arange(rows).repeat_interleave(cols)  # (rows*cols,) row index of each patch
    f = torch.arange(cols).repeat(rows)  # (rows*cols,) column index
    table = torch.cat([sincos_1d(dim // 2, f), sincos_1d(dim // 2, t)], dim=1)
    return _with_cls_row(table, cls_token)


def sincos_seq(dim: int, length: int, cls_token: bool = True) -> torch.Tensor:
    """1-D table over ``length`` patch indices (the decoder's), zero row for cls: ``(1+L, dim)``."""
    return _with_cls_row(sincos_1d(dim, torch.arange(length)), cls_token)


def _with_cls_row(table: torch.Tensor, cls_token: bool) -> torch.Tensor:
    if cls_token:
        table = torch.cat([torch.zeros(1, table.shape[1], dtype=table.dtype), table], dim=0)
    return table.float()
