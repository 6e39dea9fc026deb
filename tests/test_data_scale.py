"""Data at cluster scale: memory that does not grow with a file's length, and ranks under torchrun.

Each check runs in a fresh process (a peak RSS is per process; torchrun needs its own launcher),
using the same ``audiomaepp`` as this test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import audiomaepp

from .conftest import local_torchrun

SR = 16_000
SRC = str(Path(audiomaepp.__file__).resolve().parents[1])  # the package under test, for children
TIMEOUT = 300  # seconds per child; a hang fails the test with its log


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([SRC, str(Path(__file__).resolve().parents[1])])
    return env


def _run_all(cmds: list[list[str]]) -> list[str]:
    """Run the commands side by side (2 cores) and return their outputs; any failure fails."""
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), text=True)
        for c in cmds
    ]
    outs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"{proc.args} did not finish in {TIMEOUT} s")
        assert proc.returncode == 0, out[-3000:]
        outs.append(out)
    return outs


# -------------------------------------------------------------------------------------------------
# bounded memory for long recordings
# -------------------------------------------------------------------------------------------------

_PEAK_GROWTH = r"""
import sys
from pathlib import Path
from audiomaepp.data import FolderDataset, PrepareConfig, prepare_shards

def peak_mb():  # this process's peak RSS (not getrusage's, which a child inherits from pytest)
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024

mode, audio, out = sys.argv[1:4]
Path("/proc/self/clear_refs").write_text("5")  # peak := current RSS, after the imports
before = peak_mb()
if mode == "prepare":  # one process: decoding, segments and shard writing all count here
    prepare_shards([audio], out, PrepareConfig(workers=1), progress=False)
else:  # training input straight from the audio file
    for _ in FolderDataset([audio], 4, shuffle_buffer=0):
        pass
print("GROWTH_MB", peak_mb() - before)
"""


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """A 4-minute and a 32-minute recording (16 kHz, 16-bit: 7.7 and 61 MB)."""
    root = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(0)
    out = {}
    for minutes in (4, 32):
        out[minutes] = root / f"rec_{minutes}min.wav"
        audio = (0.1 * rng.standard_normal(minutes * 60 * SR)).astype(np.float32)
        sf.write(out[minutes], audio, SR, subtype="PCM_16")
    return out


@pytest.mark.parametrize("mode", ["prepare", "folder"])
def test_peak_memory_does_not_grow_with_the_recordings_length(
    recordings: dict[int, Path], tmp_path: Path, mode: str
) -> None:
    """Fault: a recording 8x longer. Before, ``prepare`` held every segment's log-mel and the
    folder loader decoded the whole file: measured on the old code, 4 -> 40 minutes grew the
    peak by 40 MB (prepare) and 1 085 MB (folder). Kept: the 32-minute file's peak is within 15 MB
    of the 4-minute one's (measured 1.5 and 4 MB), so neither holds more than a segment."""
    cmds = [
        [sys.executable, "-c", _PEAK_GROWTH, mode, str(recordings[m]), str(tmp_path / f"out{m}")]
        for m in (4, 32)
    ]
    short, long = (float(out.split("GROWTH_MB")[-1]) for out in _run_all(cmds))
    assert long - short < 15, f"peak RSS grew {short:.0f} MB (4 min) -> {long:.0f} MB (32 min)"
    if mode == "prepare":
        manifest = json.loads((tmp_path / "out32" / "manifest.json").read_text())
        assert manifest["clips"] == 64 and manifest["segmented"][0]["segments"] == 64


# -------------------------------------------------------------------------------------------------
# torchrun: 2 ranks x 2 loader workers
# -------------------------------------------------------------------------------------------------

_RANK = r"""
import json, sys
import torch.distributed as dist
from audiomaepp.data import make_loader, make_pretraining_dataset

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
shards, out, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
ds = make_pretraining_dataset(
    shards, rank=rank, world_size=world, shuffle_buffer=16, with_keys=True
)
loader = make_loader(ds, batch_size=6, num_workers=2, prefetch_factor=2)
keys = []
for epoch in range(epochs):
    ds.set_epoch(epoch)
    keys.append([k for _, batch_keys in loader for k in batch_keys])
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(keys, f)
dist.barrier()
dist.destroy_process_group()
"""


def _shards(root: Path, shards: int, clips: int) -> Path:
    from audiomaepp.data.shards import ShardWriter

    root.mkdir()
    gen = torch.Generator().manual_seed(0)
    for s in range(shards):
        w = ShardWriter(root / f"shard-{s:06d}.tar")
        for c in range(clips):
            w.add(f"s{s}c{c}", (torch.randn(250, 80, generator=gen) - 4).numpy(), {})
        w.commit()
    return root


def test_torchrun_ranks_read_disjoint_complete_epochs(tmp_path: Path) -> None:
    """2 ranks x 2 DataLoader workers under torchrun (gloo), 8 shards of 6 clips: each of the 4
    (rank, worker) slots owns 2 shards, so every epoch each rank yields 24 crops, the ranks share
    no clip, and together they give each of the 48 clips exactly once; epochs differ in order."""
    data = _shards(tmp_path / "shards", shards=8, clips=6)
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    _run_all([local_torchrun(str(script), str(data), str(tmp_path), "3")])
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    everything = sorted(f"s{s}c{c}" for s in range(8) for c in range(6))
    for epoch in range(3):
        a, b = per_rank[0][epoch], per_rank[1][epoch]
        assert len(a) == len(b) == 24
        assert not set(a) & set(b)
        assert sorted(a + b) == everything
    assert per_rank[0][0] != per_rank[0][1]  # each epoch reshuffles
