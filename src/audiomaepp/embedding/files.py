"""Files to embeddings: the one decode-and-embed loop (``audiomaepp embed``, the evaluation cache).

Files are decoded in worker processes (:func:`audiomaepp.workers.imap_files`: in input order, a
bounded number in flight, a file that fails to decode or kills its worker is reported and the job
goes on) while this process runs the encoder on the clips decoded so far. A file longer than
``LONG_FILE_SECONDS`` is not decoded whole: its worker hands back a
:class:`~audiomaepp.embedding.stream.FileSource` and this process streams it in two passes (the
first, :meth:`Embedder.prepare`, reads it through once, so a file that turns out to be bad fails
alone), in memory that does not grow with its length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import duration_s, load_audio
from ..errors import AudioMAEError
from ..workers import WorkFailed, imap_files
from .stream import FileSource

__all__ = ["FileEmbedding", "decode_file", "embed_files"]

GROUP = 64  # clips per ``embed`` call for embedders without streaming (the log-mel baseline)
LONG_FILE_SECONDS = 120.0  # longer files are streamed; shorter ones (2 min: 7.7 MB) decode whole


@dataclass
class FileEmbedding:
    """The outcome for one input file: an embedding, or the reason there is none."""

    row: int  # position in the input list
    path: Path
    embedding: np.ndarray | None  # scene (d,) or timestamp steps (S, d) float32
    num_samples: int  # decoded length at 16 kHz (0 when it failed)
    error: str = ""


def decode_file(path: str | Path) -> np.ndarray | FileSource:
    """Worker function: a file -> mono float32 16 kHz samples ``(N,)``, or a :class:`FileSource`
    for a file longer than ``LONG_FILE_SECONDS`` (module level: picklable)."""
    if (duration_s(path) or 0.0) > LONG_FILE_SECONDS:  # unreadable header: decode reports it
        return FileSource(Path(path))
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
            if isinstance(result, FileSource):
                try:  # pass 1 here: a bad long file fails alone, before it joins a batch
                    result = prepare(result)
                except AudioMAEError as exc:
                    result = WorkFailed(f"{type(exc).__name__}: {exc}")
            if isinstance(result, WorkFailed):
                failed[row] = result.message
                continue
            decoded_rows.append(row)
            samples[row] = result.num_samples if hasattr(result, "num_samples") else len(result)
            yield result

    def prepare(source: FileSource):
        if hasattr(embedder, "prepare"):
            return embedder.prepare(source)
        return load_audio(source.path)  # an embedder that takes whole arrays only

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
    """``(position, vector)`` from an ``embed(list) -> (n, d)`` function called on groups of
    clips."""
    group: list[np.ndarray] = []
    done = 0
    for clip in clips:
        group.append(clip)
        if len(group) == GROUP:
            yield from enumerate(np.asarray(embed(group)), start=done)
            done, group = done + len(group), []
    if group:
        yield from enumerate(np.asarray(embed(group)), start=done)
