"""Choosing the compute device: one rule for every command."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``None`` / ``"auto"`` -> CUDA when available, else CPU; a CUDA device that torch cannot see
    is a clear error rather than a crash deep inside the first kernel."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was asked for, but torch sees no CUDA device")
    return device
