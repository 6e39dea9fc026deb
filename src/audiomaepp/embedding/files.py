"""Files to embeddings: the one decode-and-embed loop (``audiomaepp embed``, the evaluation cache).

Files are decoded in worker processes (:func:`audiomaepp.workers.imap_files`: in input order, a
bounded number in flight, a file that fails to decode or kills its worker is reported and the job
goes on) while this process runs the encoder on the clips decoded so far.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import load_audio
from ..workers import WorkFailed, imap_files

__all__ = ["FileEmbedding", "decode_file", "embed_files"]

GROUP = 64  # clips per ``embed`` call for embedders without streaming (the log-mel baseline)


@dataclass
class FileEmbedding:
    """The outcome for one input file: an embedding, or the reason there is none."""

    row: int  # position in the input list
    path: Path
    embedding: np.ndarray | None  # scene (d,) or timestamp steps (S, d) float32
    num_samples: int  # decoded length at 16 kHz (0 when it failed)
    error: str = ""


def decode_file(path: str | Path) -> np.ndarray:
    """Worker function: a file -> mono float32 16 kHz samples ``(N,)`` (module level: picklable)."""
    return load_audio(path)


def embed_files(
    embedder,
    paths: Sequence[str | Path],
    *,
    workers: int = 0,
    timestamps: bool = False,
    on_decoded: Callable[[int], None] | None = None,
) -> Iterator[FileEmbedding]:
    """Decode ``paths`` in ``workers`` processes (0: in this process) and embed them; yield one
    :class:`FileEmbedding` per path in input order.

    ``embedder``: an :class:`~audiomaepp.embedding.Embedder` (chunks of many files share encoder
    batches; ``timestamps=True`` gives ``(S, d)`` steps) or any object with ``embed(list of
    arrays) -> (n, d)`` (called on groups of decoded clips). ``on_decoded(row)`` is called as each
    file is decoded (a progress bar).
    """
    paths = [Path(p) for p in paths]
    failed: dict[int, str] = {}  # row -> why, until it is yielded in order
    decoded_rows: list[int] = []  # the embedder's stream position -> row
    samples: dict[int, int] = {}

    def clips() -> Iterator[np.ndarray]:
        for row, result in imap_files(decode_file, paths, workers):
            if on_decoded is not None:
                on_decoded(row)
            if isinstance(result, WorkFailed):
                failed[row] = result.message
                continue
            decoded_rows.append(row)
            samples[row] = len(result)
            yield result

    def failures_before(row: int) -> Iterator[FileEmbedding]:
        for r in sorted(r for r in failed if r < row):
            yield FileEmbedding(r, paths[r], None, 0, failed.pop(r))

    if hasattr(embedder, "iter_embeddings"):
        stream = (
            (pos, t.numpy()) for pos, t in embedder.iter_embeddings(clips(), timestamps=timestamps)
        )
    elif timestamps:
        raise ValueError(
            f"embedder {getattr(embedder, 'name', embedder)!r} gives scene embeddings only"
        )
    else:
        stream = _grouped(embedder.embed, clips())
    for pos, emb in stream:
        row = decoded_rows[pos]
        yield from failures_before(row)
        yield FileEmbedding(row, paths[row], emb, samples.pop(row))
    yield from failures_before(len(paths))


def _grouped(
    embed: Callable[[list[np.ndarray]], np.ndarray], clips: Iterable[np.ndarray]
) -> Iterator[tuple[int, np.ndarray]]:
    """``(position, vector)`` from an ``embed(list) -> (n, d)`` function called on groups of clips."""
    group: list[np.ndarray] = []
    done = 0
    for clip in clips:
        group.append(clip)
        if len(group) == GROUP:
            yield from enumerate(np.asarray(embed(group)), start=done)
            done, group = done + len(group), []
    if group:
        yield from enumerate(np.asarray(embed(group)), start=done)
