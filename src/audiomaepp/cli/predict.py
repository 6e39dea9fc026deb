"""``audiomaepp predict MODEL_DIR INPUTS... --out preds.csv [--top-k 5] [--segments]``.

Files of any length, format, sample rate and channel count are decoded in worker processes
(:func:`audiomaepp.workers.imap_files`), cut into 2-s windows and scored in shared batches. One
row per file (``segment`` = ``clip``: the mean of its window scores) and, with ``--segments``, one
row per 2-s window after it. A file that cannot be read is listed in ``<out>.skipped.csv`` (and
logged) and never stops the job.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np

from .options import add_dtype_flag

log = logging.getLogger("audiomaepp.predict")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="label audio files with a fine-tuned classifier",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("model_dir", help="classifier directory (RUN/best of audiomaepp finetune)")
    p.add_argument(
        "inputs", nargs="+", help="audio files, folders (recursive), globs or .txt lists"
    )
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--top-k", type=int, default=5, help="labels with scores per row (default 5)")
    p.add_argument("--segments", action="store_true", help="also one row per 2-s window")
    p.add_argument(
        "--threshold", type=float, default=0.5, help="multilabel: scores >= this are predicted"
    )
    p.add_argument("--batch-size", type=int, default=64, help="2-s windows per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    add_dtype_flag(p)
    p.add_argument(
        "--workers", type=int, default=2, help="decoding processes (<= 1: in this process)"
    )
    p.set_defaults(func=run)


def decode_logmel(path: Path):
    """A file -> its standardised log-mel ``(T, 80)`` float32, or a
    :class:`~audiomaepp.embedding.stream.FileSource` for a file longer than
    ``LONG_FILE_SECONDS``, which the main process streams (module-level: runs in workers)."""
    from ..audio import duration_s, load_audio
    from ..embedding.files import LONG_FILE_SECONDS
    from ..embedding.stream import FileSource
    from ..finetune.data import clip_logmel

    if (duration_s(path) or 0.0) > LONG_FILE_SECONDS:
        return FileSource(Path(path))
    return clip_logmel(load_audio(path)).numpy()


def _row(
    path: str,
    segment: str,
    start: float,
    end: float,
    predicted: list[str],
    scores: np.ndarray,
    labels: tuple[str, ...],
    k: int,
) -> list[str]:
    order = np.argsort(-scores, kind="stable")[:k]
    pairs = [x for c in order for x in (labels[c], f"{scores[c]:.4f}")]
    return [path, segment, f"{start:.2f}", f"{end:.2f}", ";".join(predicted), *pairs]


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..audio import find_audio_files
    from ..devices import resolve_device
    from ..embedding.stream import FileSource
    from ..errors import AudioMAEError
    from ..finetune import AudioClassifier
    from ..finetune.data import clip_windows
    from ..frontend import INPUT_FRAMES, FrontendConfig, num_frames
    from ..workers import WorkFailed, imap_files

    files = find_audio_files(args.inputs)
    if not files:
        log.error("no audio files found in %s", " ".join(args.inputs))
        return 1
    try:
        clf = AudioClassifier.from_pretrained(args.model_dir, device=resolve_device(args.device))
    except AudioMAEError as exc:
        log.error("%s", exc)
        return 2
    fps = FrontendConfig().frames_per_second  # log-mel frames -> seconds
    window_s = INPUT_FRAMES / fps  # one model input: 2 s
    k = max(1, min(args.top_k, len(clf.labels)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    skipped: list[tuple[str, str]] = []
    done = 0
    header = ["path", "segment", "start_s", "end_s", "predicted"] + [
        f"{w}_{i}" for i in range(1, k + 1) for w in ("label", "score")
    ]
    with (
        open(out, "w", newline="") as fh,
        tqdm(total=len(files), unit="file", desc="predict") as bar,
    ):
        writer = csv.writer(fh)
        writer.writerow(header)
        pending: list[tuple[Path, torch.Tensor, int]] = []

        def flush() -> None:
            scores = clf.window_scores([w for _, w, _ in pending], args.batch_size, args.dtype)
            for (path, _, frames), seg in zip(pending, scores, strict=True):
                write(path, clf.prediction(seg, frames, args.threshold), seg, frames)
            pending.clear()

        def write(path: Path, pred, seg: np.ndarray, frames: int) -> None:
            clip = np.array([pred.scores[lab] for lab in clf.labels])
            writer.writerow(
                _row(str(path), "clip", 0.0, frames / fps, pred.labels, clip, clf.labels, k)
            )
            if args.segments:
                for i, (start, s) in enumerate(zip(pred.segment_starts, seg, strict=True)):
                    top = (
                        [clf.labels[int(s.argmax())]]
                        if clf.config.prediction_type == "multiclass"
                        else [
                            lab for lab, v in zip(clf.labels, s, strict=True) if v >= args.threshold
                        ]
                    )
                    end = min(start + window_s, max(frames / fps, window_s))
                    writer.writerow(_row(str(path), str(i), start, end, top, s, clf.labels, k))

        for index, result in imap_files(decode_logmel, files, args.workers):
            bar.update(1)
            if isinstance(result, WorkFailed):
                skipped.append((str(files[index]), str(result)))
                log.warning("skipped %s", result)
                continue
            if isinstance(result, FileSource):  # a long file: streamed here, in bounded memory
                flush()
                try:
                    pred = clf.predict_stream(result, args.threshold, args.dtype, args.batch_size)
                except AudioMAEError as exc:
                    skipped.append((str(files[index]), f"{type(exc).__name__}: {exc}"))
                    log.warning("skipped %s", exc)
                    continue
                frames = num_frames(result.num_samples)
                write(files[index], pred, pred.segment_scores, frames)
                done += 1
                continue
            lms = torch.from_numpy(result)
            pending.append((files[index], clip_windows(lms), lms.shape[0]))
            done += 1
            if sum(w.shape[0] for _, w, _ in pending) >= args.batch_size:
                flush()
        if pending:
            flush()
    skipped_path = out.with_suffix(".skipped.csv")
    with open(skipped_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "reason"])
        w.writerows(skipped)
    print(
        f"wrote {out}: {done} file(s) labelled, {len(skipped)} skipped (listed in {skipped_path})"
    )
    return 0 if done else 1
