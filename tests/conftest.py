"""Shared fixtures: the conformance checkpoint (read from ../shared, never copied) and tiny configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO.parent / "shared" / "conformance" / "official_tiny64"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    if not (CONFORMANCE / "checkpoint-99.pth").is_file():
        pytest.fail(
            f"conformance files not found at {CONFORMANCE} (expected ../shared beside the repo)"
        )
    return CONFORMANCE


@pytest.fixture(scope="session")
def reference(conformance_dir: Path) -> dict[str, np.ndarray]:
    with np.load(conformance_dir / "reference.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def converted_dir(conformance_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conformance checkpoint converted with its release config."""
    from audiomaepp.model.release import convert_release

    out = tmp_path_factory.mktemp("official_tiny64")
    convert_release(
        conformance_dir / "checkpoint-99.pth", out, release_config=conformance_dir / "config.json"
    )
    return out


def micro_config(**overrides):
    """A very small model for fast CPU tests."""
    from audiomaepp import AudioMAEConfig

    base = dict(
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    return AudioMAEConfig.preset("tiny", **{**base, **overrides})
