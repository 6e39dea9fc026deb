"""The one seed mixer: every random stream (masking noise, data order, crops, augmentation, drop
path) is seeded by ``mix_seed(seed, STREAM, ...)`` of the run's seed and the stream's coordinates.

blake2b of the integers' fixed-width bytes: platform and process independent (unlike ``hash``),
well mixed for neighbouring inputs (seed 0 / 1, step 5 / 6), and usable by ``torch.Generator``,
``numpy.random.default_rng`` and ``random.Random`` alike (63 bits, non-negative).
"""

from __future__ import annotations

import hashlib

__all__ = ["mix_seed"]


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (platform independent)."""
    data = b"".join(int(p).to_bytes(8, "little", signed=True) for p in parts)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
