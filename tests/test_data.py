"""Tests of ``audiomaepp.data``: ``prepare`` (shards + manifest, resume, node split), the loader."""

from __future__ import annotations

import importlib
import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiomaepp.audio import find_audio_files, load_audio
from audiomaepp.cli.main import main as cli_main
from audiomaepp.data import (
    FolderDataset,
    PrepareConfig,
    ShardDataset,
    load_manifest,
    make_loader,
    make_pretraining_dataset,
    merge_manifests,
    prepare_shards,
    worker_plan,
)
from audiomaepp.data.shards import ShardWriter, decode_npy, iter_clip_members
from audiomaepp.frontend import crop_or_tile, log_mel, standardize, tile_to

SR = 16_000
# name -> (seconds, sample rate, channels); all must end up in the shards
GOOD = {
    "a.wav": (2.5, SR, 1),
    "b.flac": (1.0, SR, 1),
    "c.ogg": (1.2, SR, 1),
    "sub/d_stereo.wav": (1.5, 44_100, 2),
    "e_short.wav": (0.5, SR, 1),
}
# their log-mel frames, worked out by hand: seconds * 16 000 samples, 1 + samples // 160 (spec §1)
GOOD_FRAMES = {
    "a.wav": 251,
    "b.flac": 101,
    "c.ogg": 121,
    "sub/d_stereo.wav": 151,
    "e_short.wav": 51,
}
# name -> the reason prepare must record
BAD = {
    "corrupt.wav": "decode_error",
    "empty.wav": "empty",
    "silent.wav": "silent",
    "nan.wav": "non_finite",
    "tiny.wav": "too_short",
}
prepare_mod = importlib.import_module("audiomaepp.data.prepare")
SMALL_SHARDS = 0.03  # MB: ~2 one-second clips per shard, so the tests see several shards


def _noise(rng: np.random.Generator, seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    x = (0.1 * rng.standard_normal((round(seconds * sr), channels))).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def _write_bad(root: Path, rng: np.random.Generator) -> None:
    (root / "corrupt.wav").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    sf.write(root / "empty.wav", np.zeros(0, np.float32), SR)
    sf.write(root / "silent.wav", np.zeros(SR, np.float32), SR)
    x = _noise(rng, 1.0, SR)
    x[123] = np.nan
    sf.write(root / "nan.wav", x, SR, subtype="FLOAT")
    sf.write(root / "tiny.wav", _noise(rng, 0.05, SR), SR)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    (root / "sub").mkdir()
    rng = np.random.default_rng(0)
    for name, (seconds, sr, ch) in GOOD.items():
        sf.write(root / name, _noise(rng, seconds, sr, ch), sr)
    _write_bad(root, rng)
    return root


def _cfg(**kw: object) -> PrepareConfig:
    return PrepareConfig(**{"shard_size_mb": SMALL_SHARDS, "workers": 1, **kw})


@pytest.fixture(scope="module")
def prepared(audio_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    prepare_shards([audio_dir], out, _cfg(), progress=False)
    return out


def _clips(shard_dir: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """relpath -> (stored log-mel, json) over every shard listed in the manifest."""
    out = {}
    for s in load_manifest(shard_dir)["shards"]:
        with tarfile.open(shard_dir / s["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                assert meta["relpath"] not in out, "clip stored twice"
                out[meta["relpath"]] = (decode_npy(members[name[:-5] + ".npy"]), meta)
    return out


def _shard_bytes(shard_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(shard_dir.glob("*.tar"))}


# -------------------------------------------------------------------------------------------------
# prepare
# -------------------------------------------------------------------------------------------------


def test_prepare_stores_every_good_clip_with_its_frames(prepared: Path, audio_dir: Path) -> None:
    clips = _clips(prepared)
    assert set(clips) == set(GOOD)
    for rel, (lms, meta) in clips.items():
        n16 = load_audio(audio_dir / rel).shape[0]
        seconds, _, _ = GOOD[rel]
        assert abs(n16 - seconds * SR) <= 1  # resampled to 16 kHz
        assert lms.shape == (GOOD_FRAMES[rel], 80) and lms.dtype == np.float16
        assert meta["frames"] == lms.shape[0]
        assert meta["duration"] == pytest.approx(n16 / SR)
        assert Path(meta["source"]) == (audio_dir / rel).absolute()
    m = load_manifest(prepared)
    assert m["files"] == len(GOOD) + len(BAD)
    assert m["clips"] == len(GOOD) == sum(s["clips"] for s in m["shards"])
    assert m["frames"] == sum(lms.shape[0] for lms, _ in clips.values())
    assert m["hours"] == pytest.approx(sum(s for s, _, _ in GOOD.values()) / 3600, rel=1e-3)
    assert len(m["shards"]) >= 3 and m["config"]["shard_size_mb"] == SMALL_SHARDS


def test_prepare_records_every_bad_file_with_its_reason(prepared: Path) -> None:
    skipped = load_manifest(prepared)["skipped"]
    assert {Path(s["path"]).name: s["reason"] for s in skipped} == BAD
    for s in skipped:
        assert Path(s["path"]).name in s["detail"]  # the message names the file


def test_stored_logmel_equals_frontend_of_decoded_audio(prepared: Path, audio_dir: Path) -> None:
    for rel, (lms, _) in _clips(prepared).items():
        ref = log_mel(torch.from_numpy(load_audio(audio_dir / rel)))[0, 0].numpy()  # (T, 80)
        np.testing.assert_allclose(lms.astype(np.float32), ref, rtol=1e-3, atol=1e-3)


def test_webdataset_reads_the_shards(prepared: Path) -> None:
    import webdataset as wds

    urls = [str(prepared / s["name"]) for s in load_manifest(prepared)["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == len(GOOD)
    for s in samples:
        assert s["npy"].shape == (s["json"]["frames"], 80) and s["json"]["key"] == s["__key__"]


def test_keys_are_stable_whatever_the_input_spelling(audio_dir: Path) -> None:
    from audiomaepp.data.prepare import clip_keys, relative_names

    def keys(inputs: list) -> list[str]:
        files = find_audio_files(inputs)
        return clip_keys(relative_names(files, inputs), [str(f.absolute()) for f in files])

    by_dir = keys([audio_dir])
    assert by_dir == keys([f"{audio_dir}/**/*.*"])
    assert all("." not in k and "/" not in k for k in by_dir) and len(set(by_dir)) == len(by_dir)


def _copy(prepared: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(prepared, out)
    return out


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = prepare_mod.process_file

    def counting(path: str, *args: object) -> prepare_mod.ClipResult:
        calls.append(path)
        return real(path, *args)

    monkeypatch.setattr(prepare_mod, "process_file", counting)
    return calls


def test_rerun_recomputes_nothing(
    prepared: Path, audio_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _copy(prepared, tmp_path)
    before, manifest = _shard_bytes(out), load_manifest(out)
    calls = _count_calls(monkeypatch)
    report = prepare_shards([audio_dir], out, _cfg(), progress=False)
    assert calls == [] and report.processed == 0
    assert report.reused_shards == len(before)
    assert _shard_bytes(out) == before and load_manifest(out) == manifest


def test_truncated_shard_is_redone(
    prepared: Path, audio_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _copy(prepared, tmp_path)
    before = _shard_bytes(out)
    victim = out / "shard-000001.tar"
    victim.write_bytes(victim.read_bytes()[:1000])  # a shard cut short (disk full, copy error)
    calls = _count_calls(monkeypatch)
    report = prepare_shards([audio_dir], out, _cfg(), progress=False)
    assert report.reused_shards == 1  # only shard 0 precedes it
    assert 0 < len(calls) < len(GOOD) + len(BAD)
    assert _shard_bytes(out) == before


def test_half_written_shard_after_a_crash_is_discarded_and_redone(
    prepared: Path, audio_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _copy(prepared, tmp_path)
    before = _shard_bytes(out)
    progress = out / "progress.jsonl"
    lines = progress.read_text().splitlines()
    # Crash while writing shard 2: its records never made it, only a partial .tmp is on disk.
    records = [json.loads(line) for line in lines[1:]]
    keep = next(i for i, r in enumerate(records) if r["shard"] == "shard-000002.tar")
    progress.write_text("\n".join(lines[: 1 + keep]) + '\n{"start": 3, "en')  # torn last line
    partial = out / "shard-000002.tar.tmp"
    partial.write_bytes((out / "shard-000002.tar").read_bytes()[:3000])
    (out / "shard-000002.tar").unlink()
    (out / "manifest.json").unlink()
    calls = _count_calls(monkeypatch)
    report = prepare_shards([audio_dir], out, _cfg(), progress=False)
    assert report.reused_shards == 2
    assert len(calls) == report.processed == len(GOOD) + len(BAD) - records[keep]["start"]
    assert not partial.exists()
    assert _shard_bytes(out) == before
    assert load_manifest(out) == load_manifest(prepared)


def test_other_config_in_the_same_folder_is_refused_unless_overwrite(
    prepared: Path, audio_dir: Path, tmp_path: Path
) -> None:
    out = _copy(prepared, tmp_path)
    with pytest.raises(ValueError, match="different input list or config"):
        prepare_shards([audio_dir], out, _cfg(shard_size_mb=1.0), progress=False)
    report = prepare_shards(
        [audio_dir], out, _cfg(shard_size_mb=1.0), overwrite=True, progress=False
    )
    assert [s["name"] for s in report.manifest["shards"]] == ["shard-000000.tar"]
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar"]


def test_pool_gives_the_same_shards_as_one_process(
    prepared: Path, audio_dir: Path, tmp_path: Path
) -> None:
    report = prepare_shards([audio_dir], tmp_path, _cfg(workers=2), progress=False)
    assert report.processed == len(GOOD) + len(BAD)
    assert _shard_bytes(tmp_path) == _shard_bytes(prepared)


def test_two_node_split_covers_every_file_exactly_once(
    prepared: Path, audio_dir: Path, tmp_path: Path
) -> None:
    common = [
        "prepare",
        str(audio_dir),
        "--out",
        str(tmp_path),
        "--shard-size-mb",
        str(SMALL_SHARDS),
        "--workers",
        "1",
        "--no-progress",
        "--num-nodes",
        "2",
    ]
    assert cli_main([*common, "--node-rank", "1"]) == 0
    assert not (tmp_path / "manifest.json").exists()
    with pytest.raises(ValueError, match=r"missing node ranks \[0\]"):
        load_manifest(tmp_path)
    assert cli_main([*common, "--node-rank", "0"]) == 0
    assert (tmp_path / "manifest-r00.json").is_file() and (tmp_path / "manifest-r01.json").is_file()
    names = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert names and all(n.startswith(("shard-r00-", "shard-r01-")) for n in names)
    assert any(n.startswith("shard-r01-") for n in names) and any(
        n.startswith("shard-r00-") for n in names
    )
    merged = load_manifest(tmp_path)  # written automatically by the last node
    assert merged == merge_manifests(tmp_path, write=False)
    assert merged["clips"] == len(GOOD) and merged["files"] == len(GOOD) + len(BAD)
    assert _clips(tmp_path).keys() == _clips(prepared).keys()  # _clips asserts no duplicates
    assert sorted(Path(s["path"]).name for s in merged["skipped"]) == sorted(BAD)
    (tmp_path / "manifest.json").unlink()
    assert cli_main(["prepare", "--merge", "--out", str(tmp_path)]) == 0
    assert load_manifest(tmp_path) == merged


# -------------------------------------------------------------------------------------------------
# loader
# -------------------------------------------------------------------------------------------------


def _frames(shard: int, clip: int) -> int:
    return (70, 200, 260, 451)[(shard + clip) % 4]  # a short clip (tiled), exact, longer ones


def _write_synthetic(root: Path, shards: int, clips: int) -> Path:
    """``shards`` tars of ``clips`` random log-mels each; clip key ``s{shard}c{clip}``."""
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1)
    for s in range(shards):
        w = ShardWriter(root / f"shard-{s:06d}.tar")
        for c in range(clips):
            t = _frames(s, c)
            lms = 3.0 * torch.randn(t, 80, generator=gen) + torch.linspace(-8, 4, 80)
            lms[:20] += 6.0  # a loud onset: crops that miss it have statistics unlike the clip's
            w.add(f"s{s}c{c}", lms.numpy(), {"frames": t})
        w.commit()
    return root


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_synthetic(tmp_path_factory.mktemp("synth"), shards=8, clips=6)


def _stored(root: Path) -> dict[str, torch.Tensor]:
    out = {}
    for p in sorted(root.glob("*.tar")):
        for key, ref in iter_clip_members(p):
            out[key] = torch.from_numpy(decode_npy(ref.read()).astype(np.float32))
    return out


def _ds(root: Path, **kw: object) -> ShardDataset:
    args = {"samples_per_epoch": 40, "shuffle_buffer": 10, "with_keys": True, **kw}
    return make_pretraining_dataset(root, **args)


def _keys_and_crops(items: list) -> tuple[list[str], torch.Tensor]:
    return [k for _, k in items], torch.stack([x for x, _ in items])


def test_crops_are_slices_of_the_whole_clip_standardised_with_population_std(synth: Path) -> None:
    stored = _stored(synth)
    items = list(_ds(synth, samples_per_epoch=48))
    assert len(items) == 48
    for crop, key in items:
        assert crop.shape == (1, 200, 80) and crop.dtype == torch.float32
        full = standardize(stored[key], unbiased=False)  # (T, 80), whole clip
        t = full.shape[0]
        if t < 200:
            continue
        starts = [
            s for s in range(t - 199) if torch.allclose(full[s : s + 200], crop[0], atol=1e-6)
        ]
        assert starts, f"{key}: crop is not a window of the whole-clip standardised log-mel"
        if t == 200:  # the crop is the whole clip: mean 0, population std 1
            assert abs(float(crop.mean())) < 1e-5
            assert abs(float(crop.std(unbiased=False)) - 1) < 1e-5
            assert abs(float(crop.std(unbiased=True)) - 1) > 1e-5
        else:  # standardised as a whole, not per crop
            own = standardize(stored[key][starts[0] : starts[0] + 200], unbiased=False)
            assert not torch.allclose(own, crop[0], atol=1e-2)


def test_short_clips_are_tiled(synth: Path) -> None:
    stored = _stored(synth)
    for crop, key in _ds(synth):
        if stored[key].shape[0] == 70:
            full = standardize(stored[key], unbiased=False)
            torch.testing.assert_close(crop[0], full[torch.arange(200) % 70])
            return
    pytest.fail("no short clip drawn")


def test_same_seed_rank_epoch_same_sequence_otherwise_different(synth: Path) -> None:
    keys, crops = _keys_and_crops(list(_ds(synth)))
    keys2, crops2 = _keys_and_crops(list(_ds(synth)))
    assert keys == keys2 and torch.equal(crops, crops2)
    for other in ({"epoch": 1}, {"seed": 1}, {"rank": 1, "world_size": 2}):
        k, c = _keys_and_crops(list(_ds(synth, **other)))
        assert k != keys[: len(k)] or not torch.equal(c, crops[: len(c)]), other


@pytest.mark.parametrize("world_size, per_rank", [(1, 37), (2, 18), (3, 12)])
def test_an_epoch_yields_exactly_the_requested_count(
    synth: Path, world_size: int, per_rank: int
) -> None:
    for rank in range(world_size):
        ds = _ds(synth, samples_per_epoch=37, rank=rank, world_size=world_size, crops_per_clip=2)
        assert len(ds) == per_rank == len(list(ds))
    ds = _ds(synth, samples_per_epoch=37, world_size=world_size)
    loader = make_loader(
        ds, batch_size=4, num_workers=2, prefetch_factor=2, persistent_workers=False
    )
    assert sum(len(b[0]) for b in loader) == per_rank


def test_ranks_and_workers_read_disjoint_shards(synth: Path) -> None:
    shards_of = {}
    for rank in range(2):
        ds = _ds(synth, rank=rank, world_size=2, samples_per_epoch=24)
        for w in range(2):
            shards_of[rank, w] = {k.split("c")[0] for _, k in ds.iter_worker(w, 2)}
    slots = list(shards_of.values())
    assert all(slots) and sum(len(s) for s in slots) == len(set().union(*slots)) == 8


def test_too_few_shards_are_split_by_clip_not_duplicated(tmp_path: Path) -> None:
    root = _write_synthetic(tmp_path, shards=2, clips=8)
    seen = []
    for rank in range(2):
        ds = _ds(root, rank=rank, world_size=2, samples_per_epoch=16)
        for w in range(2):
            seen += [k for _, k in ds.iter_worker(w, 2)]
    assert sorted(seen) == sorted(f"s{s}c{c}" for s in range(2) for c in range(8))


@pytest.mark.parametrize("world_size, workers", [(1, 6), (8, 8)])
def test_shard_with_fewer_clips_than_slots_is_shared_round(
    tmp_path: Path, world_size: int, workers: int
) -> None:
    root = _write_synthetic(tmp_path, shards=1, clips=4)
    seen = []
    for rank in range(world_size):
        ds = _ds(root, rank=rank, world_size=world_size, samples_per_epoch=world_size * workers)
        for w in range(workers):
            keys = [k for _, k in ds.iter_worker(w, workers)]
            assert keys == [k for _, k in ds.iter_worker(w, workers)]  # deterministic
            seen += keys
    assert len(seen) == world_size * workers
    assert set(seen) == {f"s0c{c}" for c in range(4)}  # every clip read, some of them twice


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_or_corrupt_shard_is_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _write_synthetic(tmp_path, shards=3, clips=4)
    _truncate(root / "shard-000001.tar")
    (root / "shard-000002.tar").write_bytes(b"not a tar file" * 100)
    counts = [4, 4, 4]  # as a manifest written before the damage would say
    paths = sorted(root.glob("*.tar"))
    with caplog.at_level(logging.WARNING):
        ds = ShardDataset(paths, 30, clip_counts=counts, shuffle_buffer=10, with_keys=True)
        keys = [k for _, k in ds]  # several passes over the readable clips
    # the truncated shard's clips before the cut are still read; the garbage shard gives none
    assert len(keys) == 30 and set(keys) <= {f"s0c{c}" for c in range(4)} | {"s1c0", "s1c1"}
    for bad in paths[1:]:
        warned = [r for r in caplog.records if f"{bad}: skipping unreadable shard" in r.message]
        assert len(warned) == 1  # once, not once per pass
    # in DataLoader workers too, and counting clips (no manifest) survives the damage
    ds = make_pretraining_dataset(root, samples_per_epoch=12)
    assert ds.clip_counts[0] == 4 and ds.clip_counts[2] == 0
    loader = make_loader(ds, batch_size=3, num_workers=2, persistent_workers=False)
    assert sum(len(b) for b in loader) == 12


@pytest.mark.parametrize("damage", ["garbage", "missing", "cut_in_first_clip"])
def test_slot_whose_shard_is_unreadable_fails_naming_the_shard(tmp_path: Path, damage: str) -> None:
    root = _write_synthetic(tmp_path, shards=2, clips=4)
    bad = root / "shard-000001.tar"
    if damage == "garbage":
        bad.write_bytes(b"not a tar file" * 100)
    elif damage == "missing":
        bad.unlink()
    else:  # the first header is intact, its data is cut: the clip is listed but fails to load
        bad.write_bytes(bad.read_bytes()[:1000])
    ds = ShardDataset([bad], 8, clip_counts=[4])
    with pytest.raises(RuntimeError, match="shard-000001.tar"):
        list(ds)


def test_slot_with_unloadable_clips_gives_up_after_its_own_clip_count(
    synth: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    real = ShardDataset._load

    def failing(self: ShardDataset, key: str, payload: object, gen: object) -> object:
        if payload.shard.endswith("shard-000003.tar"):
            loads.append(key)
            return None
        return real(self, key, payload, gen)

    monkeypatch.setattr(ShardDataset, "_load", failing)
    ds = _ds(synth, samples_per_epoch=80)  # 8 shards of 6 clips, 8 slots: one shard each
    errors = []
    for w in range(8):
        try:
            list(ds.iter_worker(w, 8))
        except RuntimeError as exc:
            errors.append(str(exc))
    assert len(errors) == 1 and "shard-000003.tar" in errors[0]
    assert len(loads) <= 2 * 6 + 1  # the slot's 6 clips bound it, not the dataset's 48


def test_dataloader_order_is_the_round_robin_of_worker_streams(synth: Path) -> None:
    """The batches built in the workers hold exactly the crops ``iter_worker`` yields one by one,
    dealt round robin: batch ``j`` is worker ``j % 2``'s ``j // 2``-th group of 3."""
    ds = _ds(synth, samples_per_epoch=23)
    loader = make_loader(
        ds, batch_size=3, num_workers=2, prefetch_factor=2, persistent_workers=False
    )
    got = list(loader)
    streams = [list(ds.iter_worker(w, 2)) for w in range(2)]
    groups = [[s[i : i + 3] for i in range(0, len(s), 3)] for s in streams]
    want = [g for j in range(8) for g in groups[j % 2][j // 2 : j // 2 + 1]]
    assert [list(keys) for _, keys in got] == [[k for _, k in g] for g in want]
    for (batch, _), group in zip(got, want, strict=True):
        assert torch.equal(batch, torch.stack([crop for crop, _ in group]))
    assert sum(len(keys) for _, keys in got) == 23
    assert [k for _, keys in loader for k in keys] == [k for _, ks in got for k in ks]  # no timing


def test_worker_plan_partitions_the_rank_stream() -> None:
    for samples, batch, workers in [(23, 4, 3), (8, 4, 2), (5, 8, 3)]:
        for q in range(0, samples // batch + 1):
            plans = [worker_plan(samples, batch, workers, w, q * batch) for w in range(workers)]
            assert sorted(r for r, _, _ in plans) == list(range(workers))
            assert sum(c for _, _, c in plans) == samples - q * batch
    with pytest.raises(ValueError, match="multiple of the batch size"):
        worker_plan(23, 4, 2, 0, 5)
    assert worker_plan(23, 4, 1, 0, 5) == (0, 5, 18)


# the 9 crops left after 31 come from 9 clips (one crop each), or from 4 clips with 3 crops each:
# clip 10 gives crops 30-32 (31 and 32 are kept), clips 11 and 12 give 33-38, clip 13 gives 39
@pytest.mark.parametrize("crops_per_clip, clips_read", [(1, 9), (3, 4)])
def test_resume_continues_the_same_sequence_without_loading_skipped_clips(
    synth: Path, crops_per_clip: int, clips_read: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = list(_ds(synth, crops_per_clip=crops_per_clip))
    loads: list[str] = []
    real = ShardDataset._load

    def counting(self: ShardDataset, key: str, payload: object, gen: object) -> object:
        loads.append(key)
        return real(self, key, payload, gen)

    monkeypatch.setattr(ShardDataset, "_load", counting)
    ds = _ds(synth, crops_per_clip=crops_per_clip, start_index=31)
    rest = list(ds)
    assert len(rest) == len(ds) == 9
    keys, crops = _keys_and_crops(rest)
    full_keys, full_crops = _keys_and_crops(full[31:])
    assert keys == full_keys and torch.equal(crops, full_crops)
    assert len(loads) == clips_read  # only the clips that are yielded, none read ahead


def test_resume_with_dataloader_workers(synth: Path) -> None:
    ds = _ds(synth, samples_per_epoch=30)
    loader = make_loader(
        ds, batch_size=4, num_workers=2, prefetch_factor=2, persistent_workers=False
    )
    full = [k for _, keys in loader for k in keys]
    ds.set_epoch(0, start_index=12)
    assert len(loader) == 5  # ceil(18 / 4)
    assert [k for _, keys in loader for k in keys] == full[12:]


def test_persistent_workers_follow_set_epoch(synth: Path) -> None:
    ds = _ds(synth, samples_per_epoch=16)
    loader = make_loader(ds, batch_size=4, num_workers=2, prefetch_factor=2)
    assert loader.persistent_workers
    epoch0 = [k for _, keys in loader for k in keys]
    ds.set_epoch(1)
    epoch1 = [k for _, keys in loader for k in keys]
    fresh = _ds(synth, samples_per_epoch=16, epoch=1)
    fresh_loader = make_loader(
        fresh, batch_size=4, num_workers=2, prefetch_factor=2, persistent_workers=False
    )
    assert epoch1 == [k for _, keys in fresh_loader for k in keys] != epoch0


def test_factory_picks_shards_or_folder(prepared: Path, synth: Path, audio_dir: Path) -> None:
    ds = make_pretraining_dataset(prepared)
    assert isinstance(ds, ShardDataset) and len(ds) == len(GOOD)
    assert isinstance(make_pretraining_dataset(synth), ShardDataset)
    assert len(make_pretraining_dataset(f"{synth}/shard-00000[01].tar")) == 12
    assert isinstance(make_pretraining_dataset(audio_dir), FolderDataset)
    # end to end: prepare -> standardised crops
    batch = next(iter(make_loader(ds, batch_size=5, num_workers=0)))
    assert batch.shape == (5, 1, 200, 80) and torch.isfinite(batch).all()


def test_folder_dataset_decodes_on_the_fly_and_skips_bad_files(
    audio_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        ds = make_pretraining_dataset(
            audio_dir, samples_per_epoch=12, shuffle_buffer=0, with_keys=True
        )
        items = list(ds)
    assert len(items) == 12
    keys = {Path(k).name for _, k in items}
    assert keys <= {Path(n).name for n in GOOD} | {"silent.wav", "tiny.wav"}
    assert "corrupt.wav" in caplog.text and "nan.wav" in caplog.text
    for crop, key in items:
        assert crop.shape == (1, 200, 80)
        if Path(key).name == "a.wav":
            lms = log_mel(torch.from_numpy(load_audio(key)))[0, 0]
            full = standardize(lms, unbiased=False)
            assert any(
                torch.allclose(full[s : s + 200], crop[0], atol=1e-5)
                for s in range(full.shape[0] - 199)
            )


# -------------------------------------------------------------------------------------------------
# frontend helpers the loader relies on
# -------------------------------------------------------------------------------------------------


def test_standardize_population_vs_unbiased() -> None:
    # worked by hand: mean 2, deviations +-1; population std 1, unbiased std sqrt(4 / 3)
    x = torch.tensor([[1.0, 3.0], [1.0, 3.0]])
    torch.testing.assert_close(standardize(x, unbiased=False), torch.tensor([[-1.0, 1], [-1, 1]]))
    half_root3 = 3**0.5 / 2  # 1 / sqrt(4 / 3)
    want = torch.tensor([[-half_root3, half_root3], [-half_root3, half_root3]])
    torch.testing.assert_close(standardize(x, unbiased=True), want)


def test_tile_and_crop_semantics() -> None:
    x = torch.arange(70 * 2, dtype=torch.float32).reshape(70, 2)
    torch.testing.assert_close(tile_to(x, 200), x[torch.arange(200) % 70])
    y = torch.arange(300 * 2, dtype=torch.float32).reshape(300, 2)
    a = crop_or_tile(y, 200, torch.Generator().manual_seed(3))
    b = crop_or_tile(y, 200, torch.Generator().manual_seed(3))
    start = int(a[0, 0]) // 2
    torch.testing.assert_close(a, y[start : start + 200])
    torch.testing.assert_close(a, b)


# -------------------------------------------------------------------------------------------------
# fault injection: corpus layout, dead workers, bad shard members
# -------------------------------------------------------------------------------------------------


def _folder_per_class(root: Path, classes: int, per_class: int, seconds: float = 0.2) -> Path:
    rng = np.random.default_rng(3)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            sf.write(root / f"class{c}" / f"f{i:02d}.wav", _noise(rng, seconds, SR), SR)
    return root


def test_batches_mix_a_folder_per_class_corpus(tmp_path: Path) -> None:
    """Fault: a corpus laid out one folder per class, shards about as large as the shuffle buffer.

    Sorted writing filled each shard from one folder and a worker read one shard at a time, so a
    batch of 8 held ~3 of 8 classes (measured on the old code: 3.1). Kept: with the seeded
    permutation and interleaved shards a batch mixes as a uniform draw would (5.25 expected).
    """
    audio = _folder_per_class(tmp_path / "audio", classes=8, per_class=8)
    out = tmp_path / "shards"
    prepare_shards([audio], out, _cfg(shard_size_mb=0.04), progress=False)
    manifest = load_manifest(out)
    assert manifest["clips"] == 64 and len(manifest["shards"]) >= 6  # ~8 clips per shard
    distinct = []
    for epoch in range(3):
        ds = ShardDataset.from_dir(out, shuffle_buffer=8, with_keys=True, epoch=epoch)
        keys = [k for _, k in ds]
        assert len(keys) == 64
        batches = [keys[i : i + 8] for i in range(0, 64, 8)]
        distinct += [len({k.split("_")[0] for k in batch}) for batch in batches]
    # a uniform draw of 8 from 8 equal classes averages 8 * (1 - (7/8)^8) = 5.25 distinct classes
    assert np.mean(distinct) >= 4.5, distinct


_KILL_ONE_WORKER = r"""
import multiprocessing, os, signal, sys
from audiomaepp.data import prepare as prep

real_add, killed = prep._Writer.add, []

def add(self, index, job, result):
    if not killed:  # at the first result, SIGKILL one worker of the pool (mid-run)
        child = multiprocessing.active_children()[0]
        os.kill(child.pid, signal.SIGKILL)
        killed.append(child.pid)
    return real_add(self, index, job, result)

prep._Writer.add = add
cfg = prep.PrepareConfig(shard_size_mb=0.03, workers=2)
report = prep.prepare_shards([sys.argv[1]], sys.argv[2], cfg, progress=False)
print("KILLED", killed, "CLIPS", report.manifest["clips"])
"""


def test_sigkilled_prepare_worker_neither_hangs_nor_loses_files(
    audio_dir: Path, prepared: Path, tmp_path: Path
) -> None:
    """Fault: SIGKILL a prepare worker process mid-run (as the kernel's OOM killer does).

    ``Pool.imap`` blocked forever. Kept: the job finishes, the files in flight are retried and
    stored, and the shards are byte-identical to an undisturbed run.
    """
    import sys

    from .conftest import start, wait

    out, log = tmp_path / "shards", tmp_path / "log.txt"
    proc = start([sys.executable, "-c", _KILL_ONE_WORKER, str(audio_dir), str(out)], log)
    assert wait(proc, log, timeout=180) == 0, log.read_text()[-3000:]  # a hang fails here
    assert "KILLED [" in log.read_text() and "KILLED []" not in log.read_text()
    assert load_manifest(out)["clips"] == len(GOOD)
    assert not [s for s in load_manifest(out)["skipped"] if s["reason"] == "worker_failed"]
    assert _shard_bytes(out) == _shard_bytes(prepared)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _v1_shard(path: Path, members: list[tuple[str, bytes]]) -> int:
    """A shard in format version 1, made by hand as that version's writer made it: a plain tar of
    ``KEY.npy`` / ``KEY.json`` members, no index, no statistics. Returns its size."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return path.stat().st_size


def _v1_clip(key: str, lms: np.ndarray) -> list[tuple[str, bytes]]:
    meta = {"key": key, "frames": len(lms)}
    return [
        (f"{key}.npy", _npy(lms.astype(np.float16))),
        (f"{key}.json", json.dumps(meta).encode()),
    ]


def _bad_member_shard(path: Path) -> list[str]:
    """One version-1 shard with good clips among bad ones; returns the good keys.

    Version 2 shards cannot hold such members (the writer refuses them and the loader reads frames
    by offset), but shards written before the index can: they are still checked member by member.
    """
    gen = torch.Generator().manual_seed(0)
    good = lambda t: (torch.randn(t, 80, generator=gen) - 4).numpy()  # noqa: E731
    nan = good(120)
    nan[5, 7] = np.nan
    _v1_shard(
        path,
        [
            *_v1_clip("good0", good(120)),
            *_v1_clip("wrongshape", np.zeros((120, 40))),
            *_v1_clip("zeroframes", np.zeros((0, 80))),
            *_v1_clip("nonfinite", nan),
            *_v1_clip("inf", np.full((50, 80), np.inf)),
            ("garbage.npy", b"\x93NUMPY garbage that is no array"),
            ("garbage.json", b"{}"),
            ("truncated.npy", _npy(np.zeros((300, 80), np.float16))[:2000]),  # data cut short
            ("truncated.json", b"{}"),
            ("int.npy", _npy(np.ones((120, 80), np.int16))),
            ("int.json", b"{}"),
            *_v1_clip("good1", good(230)),
        ],
    )
    return ["good0", "good1"]


def test_shard_writer_refuses_clips_the_loader_could_not_use(tmp_path: Path) -> None:
    """The version-2 loader trusts the index, so the writer checks what version 1 checked on
    every read: shape, at least one frame, finite values (in float16), and the key."""
    w = ShardWriter(tmp_path / "shard-000000.tar")
    for key, lms, message in [
        ("wrongshape", np.zeros((120, 40)), "shape"),
        ("zeroframes", np.zeros((0, 80)), "shape"),
        ("nan", np.full((5, 80), np.nan), "NaN"),
        ("overflow", np.full((5, 80), 1e5), "NaN or infinite"),  # finite in float32 only
        ("a.b", np.zeros((5, 80)), "must not contain"),
        ("__index__", np.zeros((5, 80)), "must not contain"),
    ]:
        with pytest.raises(ValueError, match=message):
            w.add(key, lms, {})
    w.abort()


def test_bad_shard_members_are_skipped_and_never_reach_a_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault: version-1 members of the wrong shape or dtype, with zero frames, NaN/inf, garbage
    or truncated.

    Kept: the worker lives on, every crop is a finite ``(1, 200, 80)``, only the good clips are
    used, and each bad member is named in a warning.
    """
    good = _bad_member_shard(tmp_path / "shard-000000.tar")
    ds = ShardDataset([tmp_path / "shard-000000.tar"], 12, shuffle_buffer=0, with_keys=True)
    with caplog.at_level(logging.WARNING):
        items = list(ds)
    assert len(items) == 12 and {k for _, k in items} == set(good)
    assert all(x.shape == (1, 200, 80) and bool(torch.isfinite(x).all()) for x, _ in items)
    for bad in ("wrongshape", "zeroframes", "nonfinite", "inf", "garbage", "truncated", "int"):
        warned = [r for r in caplog.records if f"clip {bad}:" in r.message]
        assert len(warned) == 1, bad  # named once, not once per pass
    loader = make_loader(ds, batch_size=4, num_workers=1, persistent_workers=False)
    assert [tuple(b[0].shape) for b in loader] == [(4, 1, 200, 80)] * 3


def test_long_file_is_cut_into_segments_decoded_piece_by_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault: a 75-s file at 44.1 kHz among short clips (stands in for a 10-h recording).

    Before: decoded and transformed whole (~1.2 GB per hour per worker) and stored as one member,
    of which the loader took one 2-s crop per epoch. Kept: no read larger than one 30-s piece, three
    members (30 + 30 + 15 s) whose log-mels match the whole-file decode, the manifest lists the
    file as segmented, and an epoch takes a crop of every segment.
    """
    rng = np.random.default_rng(5)
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "long.wav", _noise(rng, 75.0, 44_100), 44_100)
    sf.write(audio / "short.wav", _noise(rng, 3.0, SR), SR)
    reads: list[int] = []
    real_read = sf.SoundFile.read

    def read(self: sf.SoundFile, frames: int = -1, *args: object, **kw: object) -> np.ndarray:
        reads.append(frames if frames >= 0 else self.frames)
        return real_read(self, frames, *args, **kw)

    monkeypatch.setattr(sf.SoundFile, "read", read)
    out = tmp_path / "shards"
    prepare_shards([audio], out, _cfg(segment_s=30.0, shard_size_mb=50), progress=False)
    monkeypatch.undo()
    assert reads and max(reads) <= 30 * 44_100  # never the whole 75-s file at once
    manifest = load_manifest(out)
    assert manifest["config"]["segment_s"] == 30.0
    assert [(Path(s["path"]).name, s["segments"]) for s in manifest["segmented"]] == [
        ("long.wav", 3)
    ]
    assert manifest["clips"] == 4  # 3 segments + the short clip
    stored = _stored(out)
    long_keys = sorted(k for k in stored if k.startswith("long"))
    assert [k[-7:] for k in long_keys] == ["_s00000", "_s00001", "_s00002"]
    whole = log_mel(torch.from_numpy(load_audio(audio / "long.wav")))[0, 0]  # (7501, 80)
    assert [stored[k].shape[0] for k in long_keys] == [3001, 3001, 1501]
    for i, k in enumerate(long_keys):  # away from the cut, a segment equals the whole decode
        inner = stored[k][20:-20]
        ref = whole[i * 3000 + 20 : i * 3000 + 20 + inner.shape[0]]
        assert torch.allclose(inner, ref.to(torch.float16).float(), atol=0.05), k
    ds = ShardDataset.from_dir(out, with_keys=True)
    assert ds.samples_per_epoch == 4 and {k for _, k in ds} == set(stored)


_POISON_SCRIPT = r"""
import os, signal, sys
from audiomaepp.data import prepare as prep

real = prep.process_file

def process_file(path, *args):  # runs in every spawned worker too (this module is re-imported)
    if path.endswith("b.flac"):
        os.kill(os.getpid(), signal.SIGKILL)  # this file kills whichever worker decodes it
    return real(path, *args)

prep.process_file = process_file
if __name__ == "__main__":
    cfg = prep.PrepareConfig(shard_size_mb=0.03, workers=2)
    prep.prepare_shards([sys.argv[1]], sys.argv[2], cfg, progress=False)
"""


def test_file_that_kills_its_worker_every_time_is_listed_as_failed(
    audio_dir: Path, tmp_path: Path
) -> None:
    """Fault: one file SIGKILLs every worker that decodes it (a native decoder crash).

    Kept: the job finishes; that file is retried once alone, then recorded as skipped with reason
    ``worker_failed`` and the signal; every other good file is stored.
    """
    import sys

    from .conftest import start, wait

    script, out, log = tmp_path / "poison.py", tmp_path / "shards", tmp_path / "log.txt"
    script.write_text(_POISON_SCRIPT)
    proc = start([sys.executable, str(script), str(audio_dir), str(out)], log)
    assert wait(proc, log, timeout=180) == 0, log.read_text()[-3000:]
    manifest = load_manifest(out)
    failed = [s for s in manifest["skipped"] if s["reason"] == "worker_failed"]
    assert [Path(s["path"]).name for s in failed] == ["b.flac"]
    assert "SIGKILL" in failed[0]["detail"] and "2 runs" in failed[0]["detail"]
    assert sorted(m["relpath"] for _, m in _clips(out).values()) == sorted(set(GOOD) - {"b.flac"})


# -------------------------------------------------------------------------------------------------
# shard format: version 2 (index + statistics), old shards, newer shards
# -------------------------------------------------------------------------------------------------


def _synthetic_clips(shards: int, clips: int) -> list[dict[str, np.ndarray]]:
    """The clips of ``_write_synthetic`` (same seed and shapes), as float16 arrays per shard."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for s in range(shards):
        shard = {}
        for c in range(clips):
            t = _frames(s, c)
            lms = 3.0 * torch.randn(t, 80, generator=gen) + torch.linspace(-8, 4, 80)
            lms[:20] += 6.0
            shard[f"s{s}c{c}"] = lms.numpy().astype(np.float16)
        out.append(shard)
    return out


def _write_v1_dir(root: Path, shards: list[dict[str, np.ndarray]]) -> Path:
    """A shard folder as format version 1 wrote it: tars without index, manifest ``version: 1``."""
    root.mkdir(parents=True)
    entries = []
    for i, clips in enumerate(shards):
        name = f"shard-{i:06d}.tar"
        members = [m for key, lms in clips.items() for m in _v1_clip(key, lms)]
        size = _v1_shard(root / name, members)
        frames = sum(len(x) for x in clips.values())
        entries.append({"name": name, "clips": len(clips), "frames": frames, "bytes": size})
    manifest = {
        "format": "audiomaepp-logmel-shards",
        "version": 1,
        "num_nodes": 1,
        "node_rank": 0,
        "config": {"shard_size_mb": 1000.0},
        "files": sum(e["clips"] for e in entries),
        "clips": sum(e["clips"] for e in entries),
        "frames": sum(e["frames"] for e in entries),
        "hours": 0.0,
        "shards": entries,
        "skipped": [],
        "segmented": [],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_old_format_shards_still_load_and_give_the_same_crops(synth: Path, tmp_path: Path) -> None:
    """Shards of format version 1 (hand-made here, no index) load through their manifest and as a
    folder of tars, and give the very crops version 2 gives for the same clips and seed: the same
    clips in the same order, each a window of its whole clip standardised (the spec's oracle)."""
    clips = _synthetic_clips(shards=8, clips=6)
    old = _write_v1_dir(tmp_path / "v1", clips)
    whole = {k: torch.from_numpy(v).float() for shard in clips for k, v in shard.items()}
    new_keys, new_crops = _keys_and_crops(list(_ds(synth, crops_per_clip=2)))
    for source in (old, old / "shard-00000*.tar"):
        keys, crops = _keys_and_crops(list(_ds(str(source), crops_per_clip=2)))
        assert keys == new_keys
        torch.testing.assert_close(crops, new_crops, rtol=1e-6, atol=1e-6)
    for key, crop in zip(keys, crops, strict=True):
        full = tile_to(standardize(whole[key], unbiased=False), 200)
        assert any(
            torch.allclose(full[s : s + 200], crop[0], atol=1e-5)
            for s in range(full.shape[0] - 199)
        ), key


def test_newer_format_is_refused_with_a_clear_error(synth: Path, tmp_path: Path) -> None:
    from audiomaepp.errors import ShardFormatError

    newer = tmp_path / "manifest_v3"
    shutil.copytree(synth, newer)
    manifest = _write_v1_dir(tmp_path / "v1", _synthetic_clips(1, 2)) / "manifest.json"
    (newer / "manifest.json").write_text(
        manifest.read_text().replace('"version": 1', '"version": 3')
    )
    with pytest.raises(ShardFormatError, match="version 3 is newer than this audiomaepp reads"):
        make_pretraining_dataset(newer)
    lone = tmp_path / "tar_v3" / "shard-000000.tar"  # no manifest: the index member says it
    lone.parent.mkdir()
    _v1_shard(lone, [*_v1_clip("a", np.zeros((5, 80))), ("__audiomaepp_index_v3__", b"?")])
    with pytest.raises(ShardFormatError, match=f"{lone}: shard format version 3"):
        make_pretraining_dataset(lone.parent)


def test_index_holds_each_clips_frames_offset_and_whole_clip_statistics(prepared: Path) -> None:
    """Checked against numpy in float64 on the stored float16 clip (not the writer's code), and
    the index's offset is where the member's float16 frames are in the tar."""
    from audiomaepp.data.shards import OpenShards, read_index, scan_shard

    files, seen = OpenShards(), 0
    for entry in load_manifest(prepared)["shards"]:
        path = str(prepared / entry["name"])
        layout = scan_shard(path)
        assert layout.version == 2 and list(layout.index) == entry["index"]
        with tarfile.open(path) as tar:
            stored = {
                m.name[:-4]: decode_npy(tar.extractfile(m).read())
                for m in tar
                if m.name.endswith(".npy")
            }
            metas = {
                m.name[:-5]: json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")
            }
        for key, ref in read_index(path, layout.index, files):
            lms = stored[key].astype(np.float64)
            assert ref.frames == len(lms)
            assert ref.mean == pytest.approx(lms.mean(), rel=1e-5, abs=1e-5)
            assert ref.std == pytest.approx(lms.std(), rel=1e-5)  # population std (ddof 0)
            assert (metas[key]["mean"], metas[key]["std"]) == (ref.mean, ref.std)
            raw = files.read(path, ref.offset, ref.frames * 160)
            assert np.array_equal(np.frombuffer(raw, np.float16).reshape(-1, 80), stored[key])
            seen += 1
    files.close()
    assert seen == len(GOOD)


def test_loader_reads_only_each_crops_frames(synth: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No per-member parse: besides one index read per shard and pass, every read is one crop's
    200 frames (32 000 bytes), or the whole of a clip shorter than that (70 frames here)."""
    from audiomaepp.data.shards import OpenShards

    sizes: list[int] = []
    real = OpenShards.read

    def read(self: OpenShards, path: str, offset: int, size: int) -> bytearray:
        sizes.append(size)
        return real(self, path, offset, size)

    monkeypatch.setattr(OpenShards, "read", read)
    items = list(_ds(synth, samples_per_epoch=48))
    crop_reads = [n for n in sizes if n in (200 * 160, 70 * 160)]
    assert len(crop_reads) == len(items) == 48
    assert len(sizes) - len(crop_reads) == 8  # one index read per shard (8 shards, one pass)


def test_skip_reason_comes_from_the_error_type_not_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault: file names that contain the words the old classifier searched for. A NaN file and a
    bad sample rate under ``empty_rooms/`` were both recorded as ``empty`` (the message starts
    with the path); the audio error's typed reason decides now."""
    import pickle

    from audiomaepp.errors import InvalidAudioError

    rng = np.random.default_rng(7)
    rooms = tmp_path / "empty_rooms"
    rooms.mkdir()
    x = _noise(rng, 1.0, SR)
    x[10] = np.nan
    sf.write(rooms / "nan.wav", x, SR, subtype="FLOAT")
    sf.write(rooms / "rate.wav", _noise(rng, 1.0, SR), SR)
    sf.write(rooms / "NaN_ok.wav", _noise(rng, 1.0, SR), SR)
    real_read = sf.read

    def read(path: str, *args: object, **kw: object) -> tuple[np.ndarray, int]:
        audio, rate = real_read(path, *args, **kw)
        return audio, (0 if path.endswith("rate.wav") else rate)  # a header with rate 0

    monkeypatch.setattr(sf, "read", read)
    report = prepare_shards([rooms], tmp_path / "out", _cfg(), progress=False)
    reasons = {Path(s["path"]).name: s["reason"] for s in report.manifest["skipped"]}
    assert reasons == {"nan.wav": "non_finite", "rate.wav": "error"}
    assert report.manifest["clips"] == 1
    err = pickle.loads(
        pickle.dumps(InvalidAudioError("/data/empty_rooms/x.wav: NaN", "non_finite"))
    )
    assert err.reason == "non_finite"  # the type survives a trip through a worker process


def test_folder_dataset_reads_a_long_file_segment_by_segment_like_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 75-s file (stands in for hours) in a folder dataset: no read larger than one 30-s segment,
    one clip per segment, and each crop a window of the segment ``prepare`` stores, standardised
    with that segment's statistics."""
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "long.wav", _noise(np.random.default_rng(8), 75.0, SR), SR, subtype="FLOAT")
    prepare_shards([audio], tmp_path / "shards", _cfg(shard_size_mb=50), progress=False)
    stored = {k[-6:]: v for k, v in _stored(tmp_path / "shards").items()}  # "s0000i" -> (T, 80)
    reads: list[int] = []
    real_read = sf.SoundFile.read

    def read(self: sf.SoundFile, frames: int = -1, *args: object, **kw: object) -> np.ndarray:
        reads.append(frames if frames >= 0 else self.frames)
        return real_read(self, frames, *args, **kw)

    monkeypatch.setattr(sf.SoundFile, "read", read)
    ds = make_pretraining_dataset(audio, shuffle_buffer=0, with_keys=True, crops_per_clip=2)
    items = list(ds)
    assert ds.samples_per_epoch == 6 and max(reads) <= 30 * SR
    assert sorted({k[-6:] for _, k in items}) == ["s00000", "s00001", "s00002"]
    for crop, key in items:
        full = standardize(stored[key[-6:]], unbiased=False)  # float16-stored: 1e-2 apart
        assert any(
            torch.allclose(full[s : s + 200], crop[0], atol=2e-2)
            for s in range(full.shape[0] - 199)
        ), key


def test_prepare_leaves_no_spool_behind(tmp_path: Path) -> None:
    """Long files' segments pass through ``.spool/``; it is emptied when a run ends, and a stale one
    (a killed run) is removed by the next."""
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "long.wav", _noise(np.random.default_rng(9), 65.0, SR), SR)
    out = tmp_path / "shards"
    out.mkdir()
    (out / ".spool").mkdir()
    (out / ".spool" / "stale.f16").write_bytes(b"\0" * 100)
    report = prepare_shards([audio], out, _cfg(shard_size_mb=50), progress=False)
    assert report.manifest["clips"] == 3 and not (out / ".spool").exists()


def test_broken_index_falls_back_to_reading_members(
    prepared: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault: a format-2 shard whose index bytes are garbage, another cut short (the index, at the
    end, is lost). Kept: one warning each, and the clips whose members are intact still load."""
    out = _copy(prepared, tmp_path)
    shards = load_manifest(out)["shards"]
    garbled, cut = out / shards[0]["name"], out / shards[1]["name"]
    offset, size = shards[0]["index"]
    with open(garbled, "r+b") as f:
        f.seek(offset)
        f.write(b"\x93NUMPY" + b"\xff" * (size - 6))
    cut.write_bytes(cut.read_bytes()[: shards[1]["index"][0] - 600])  # index and its header gone
    with caplog.at_level(logging.WARNING):
        keys = {Path(k).name.split("-")[0] for _, k in ShardDataset.from_dir(out, with_keys=True)}
    for bad in (garbled, cut):
        assert [r for r in caplog.records if f"{bad}: " in r.message and "one by one" in r.message]
    assert len(keys) >= len(GOOD) - 1  # at most the cut shard's last clip is lost
