"""The one embedding path: batched front end and encoder vs a plain per-clip oracle, both layouts;
decoding files in worker processes; the evaluation cache and ``embed`` on the same path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audiomaepp.embedding.layout import CHUNK_FRAMES, group_tokens, plan_chunks
from audiomaepp.frontend import log_mel, num_frames, standardize


def reference_steps(model, wav: torch.Tensor, layout: str) -> torch.Tensor:
    """Timestamp embeddings ``(S, 5 D)`` of one clip ``(N,)``, the slow obvious way (the
    extractor as it was before batching): whole-clip log-mel, whole-clip standardisation
    (unbiased std), zero padding to whole chunks, the full model's ``encode``, token grouping,
    trim."""
    lms = standardize(log_mel(wav[None]), unbiased=True)[0, 0]  # (T, 80)
    plan = plan_chunks(wav.numel(), num_frames(wav.numel()), layout)
    lms = torch.nn.functional.pad(lms, (0, 0, 0, plan.pad_frames))
    chunks = lms.reshape(plan.num_chunks, 1, CHUNK_FRAMES, 80)
    with torch.no_grad():
        steps = group_tokens(model.encode(chunks), layout, model.config.grid_size[1])
    return steps.reshape(-1, steps.shape[-1])[: plan.num_steps]


LENGTHS = (100, 200, 3200, 31840, 32000, 64000, 160000, 333333)  # < half a window ... 20.8 s


@pytest.fixture(scope="module")
def full_model(converted_dir):
    from audiomaepp import AudioMAE

    return AudioMAE.from_pretrained(converted_dir)


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in LENGTHS]


@pytest.mark.parametrize("layout", ["release", "time_major"])
def test_batched_path_matches_the_per_clip_oracle(converted_dir, full_model, clips, layout):
    """Batches of 3 chunks: clips span batches and batches hold several clips (fp32, 1e-5)."""
    from audiomaepp.embedding import Embedder

    emb = Embedder.from_dir(
        converted_dir, device="cpu", dtype="float32", layout=layout, batch_size=3
    )
    steps = dict(emb.iter_embeddings(clips, timestamps=True))
    scene = emb.embed(clips)
    for i, clip in enumerate(clips):
        ref = reference_steps(full_model, torch.from_numpy(clip), layout)
        assert steps[i].shape == ref.shape
        torch.testing.assert_close(steps[i], ref, rtol=0, atol=1e-5)
        np.testing.assert_allclose(scene[i], ref.mean(dim=0).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", ["release", "time_major"])
def test_hear_batch_matches_the_oracle(converted_dir, full_model, layout):
    from audiomaepp import hear

    model = hear.load_model(
        str(converted_dir), layout=layout, device="cpu", dtype="float32", batch_size=4
    )
    audio = torch.randn(3, 16000 * 5) * 0.1  # 3 chunks per clip: batches cut across clips
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    for b in range(3):
        torch.testing.assert_close(
            emb[b], reference_steps(full_model, audio[b], layout), rtol=0, atol=1e-5
        )
    assert ts.shape == emb.shape[:2]
    torch.testing.assert_close(
        hear.get_scene_embeddings(audio, model), emb.mean(dim=1), rtol=0, atol=1e-5
    )


def test_front_end_on_segments_equals_the_whole_clip_front_end(converted_dir, clips):
    """Cutting a clip into 2-s segments before the STFT, and standardising chunks of many clips
    at once, gives the whole-clip log-mel standardised by the whole clip's statistics."""
    from audiomaepp.embedding import Embedder

    emb = Embedder.from_dir(converted_dir, device="cpu", dtype="float32", batch_size=5)
    plans = [emb.plan(len(c)) for c in clips]
    segments = torch.cat(
        [emb.segments(torch.from_numpy(c), p.num_chunks) for c, p in zip(clips, plans, strict=True)]
    )
    chunks = emb.standardized_chunks(segments, plans)  # (sum C, 1, 200, 80)
    start = 0
    for clip, plan in zip(clips, plans, strict=True):
        lms = standardize(log_mel(torch.from_numpy(clip)[None]), unbiased=True)[0, 0]
        lms = torch.nn.functional.pad(lms, (0, 0, 0, plan.pad_frames))
        got = chunks[start : start + plan.num_chunks, 0].reshape(-1, 80)
        torch.testing.assert_close(got, lms, rtol=0, atol=2e-5)
        start += plan.num_chunks
    assert start == len(chunks)


def test_the_embedder_keeps_no_decoder(converted_dir):
    from audiomaepp.embedding import Embedder

    emb = Embedder.from_dir(converted_dir, device="cpu", dtype="float32")
    keys = list(emb.state_dict())
    assert keys and all(k.startswith("encoder.") for k in keys)


def test_a_non_finite_clip_is_named(converted_dir, clips):
    from audiomaepp import InvalidAudioError
    from audiomaepp.embedding import Embedder

    emb = Embedder.from_dir(converted_dir, device="cpu", dtype="float32", batch_size=4)
    bad = clips[3].copy()
    bad[1000] = np.nan
    with pytest.raises(InvalidAudioError, match="clip 1"):
        list(emb.iter_embeddings([clips[2], bad, clips[4]]))


def _write_files(folder, clips):
    import soundfile as sf

    folder.mkdir()
    paths = []
    for i, clip in enumerate(clips):
        paths.append(folder / f"{i}.wav")
        sf.write(paths[-1], clip, 16000, subtype="FLOAT")
    broken = folder / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not audio")
    return paths[:2] + [broken] + paths[2:]


def test_embed_files_decodes_in_workers_and_reports_bad_files(converted_dir, clips, tmp_path):
    """Two decoding processes: results in input order, the broken file reported in its place,
    the same numbers as decoding in this process."""
    from audiomaepp.embedding import Embedder, embed_files

    emb = Embedder.from_dir(converted_dir, device="cpu", dtype="float32", batch_size=4)
    paths = _write_files(tmp_path / "in", clips[:5])
    decoded = []
    items = list(embed_files(emb, paths, workers=2, on_decoded=decoded.append))
    assert [it.row for it in items] == list(range(6)) and sorted(decoded) == list(range(6))
    assert items[2].embedding is None and "broken.wav" in items[2].error
    direct = emb.embed(clips[:5])
    got = np.stack([it.embedding for it in items if it.embedding is not None])
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-6)
    assert [it.num_samples for it in items] == [len(c) for c in clips[:2]] + [0] + [
        len(c) for c in clips[2:5]
    ]


def test_the_evaluation_cache_embeds_through_the_same_path(converted_dir, clips, tmp_path):
    """A model embedder and a non-streaming one (the log-mel baseline) both go through
    ``embed_files``; the cache's rows are the embedder's own results."""
    from audiomaepp.embedding import Embedder
    from audiomaepp.evaluation import LogMelStatsEmbedder, embed_split

    class OneSplitTask:
        name = "t"
        path = tmp_path

        def __init__(self, files):
            self._files = files

        def files(self, split):
            return [p.name for p in self._files]

        def audio_path(self, split, name):
            return tmp_path / "in" / name

    paths = _write_files(tmp_path / "in", clips[:4])
    paths.remove(tmp_path / "in" / "broken.wav")
    task = OneSplitTask(paths)
    emb = Embedder.from_dir(converted_dir, device="cpu", dtype="float32", batch_size=4)
    np.testing.assert_allclose(
        embed_split(emb, task, "test"), emb.embed(clips[:4]), rtol=0, atol=1e-6
    )
    base = LogMelStatsEmbedder()
    np.testing.assert_allclose(
        embed_split(base, task, "test"), base.embed(clips[:4]), rtol=0, atol=1e-6
    )
