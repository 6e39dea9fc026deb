"""Which number format the encoder runs in: detection of the CPU's matmul units and ``auto``.

``auto`` picks, by what was measured (``benchmarks/README.md``, "Embedding on CPU"):

* CUDA: bf16 autocast (every GPU this runs on has bf16 tensor cores);
* a CPU with native bf16 matmul (Intel AMX, or AVX512-BF16 as on Zen 4/5 and Cooper Lake and
  later): ``bfloat16``: there oneDNN's bf16 matmul ran 3-6x its fp32 one, and the bf16 encoder
  ~1.8x the fused fp32 one (AMD EPYC Zen 5, 2 cores);
* any other CPU: ``float32``. int8 dynamic quantisation (VNNI) stays an explicit choice: on the
  Zen 5 machine it was no faster than bf16 at ~3x its error (2.8e-2 vs 9.8e-3), and no CPU
  without bf16 units was available to measure whether it beats fp32 there.

The CPU's features are read from ``/proc/cpuinfo`` (the kernel's view, which is what a VM really
offers) and, where that file does not exist, from torch's own CPU queries; never from the model
name. Tests inject the flags.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["PRECISIONS", "CpuFeatures", "cpu_features", "resolve_precision"]

PRECISIONS = ("float32", "bfloat16", "float16", "int8")


@dataclass(frozen=True)
class CpuFeatures:
    """The matmul units of a CPU that decide which precision is fast."""

    model: str  # the CPU's model name, for reports only
    amx_bf16: bool  # Intel AMX tiles with bf16 (Sapphire Rapids and later)
    avx512_bf16: bool  # AVX512-BF16 dot products (Cooper Lake, Zen 4, Zen 5, ...)
    vnni: bool  # int8 dot products: AVX512-VNNI, AVX-VNNI or AMX-INT8

    @property
    def native_bf16(self) -> bool:
        return self.amx_bf16 or self.avx512_bf16

    @classmethod
    def from_flags(cls, flags: Iterable[str], model: str = "") -> CpuFeatures:
        """From ``/proc/cpuinfo``-style flag names (``avx512_bf16``, ``amx_bf16``, ...)."""
        f = set(flags)
        return cls(
            model=model,
            amx_bf16="amx_bf16" in f,
            avx512_bf16="avx512_bf16" in f,
            vnni=bool(f & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        )


def _read_cpuinfo(path: Path) -> tuple[list[str], str] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    flags: list[str] = []
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = value.split()
        elif key in ("model name", "cpu family", "model") and key not in fields:
            fields[key] = value.strip()
    model = fields.get("model name", "")
    if "cpu family" in fields:  # a VM may show only "AMD EPYC": family 26 is Zen 5, ...
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return (flags, model) if flags else None


def _torch_flags() -> list[str]:
    """The same facts from torch's CPU queries (macOS, Windows, or no ``/proc``)."""
    probes = {
        "amx_bf16": "_is_amx_tile_supported",
        "avx512_bf16": "_is_avx512_bf16_supported",
        "avx512_vnni": "_is_vnni_supported",
    }
    return [flag for flag, fn in probes.items() if getattr(torch.cpu, fn, lambda: False)()]


def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> CpuFeatures:
    """This machine's :class:`CpuFeatures`."""
    import platform

    found = _read_cpuinfo(Path(cpuinfo))
    if found is None:
        return CpuFeatures.from_flags(_torch_flags(), platform.processor() or platform.machine())
    return CpuFeatures.from_flags(*found)


def resolve_precision(
    precision: str, device: torch.device, features: CpuFeatures | None = None
) -> str:
    """``precision`` (``auto`` or one of :data:`PRECISIONS`) -> the one that runs on ``device``."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(
                f"dtype must be 'auto' or one of {list(PRECISIONS)}, got {precision!r}"
            )
        if precision == "int8" and device.type != "cpu":
            raise ValueError("dtype 'int8' (dynamic quantisation) runs on the CPU only")
        return precision
    if device.type == "cuda":
        return "bfloat16"
    if device.type != "cpu":
        return "float32"
    features = features or cpu_features()
    return "bfloat16" if features.native_bf16 else "float32"
