"""``audiomaepp embed MODEL_DIR INPUTS... --out OUT_DIR``: embeddings for files, folders or lists.

Writes ``scene.npy`` ``(n_files, 5 D)`` float32 (a memory-mapped file, so millions of rows never
sit in RAM), ``index.csv`` (row, status, seconds, steps, path), ``skipped.csv`` for files that
could not be read, and with ``--timestamps`` one ``timestamps/<row>.npz`` (``embeddings``
``(S, 5 D)``, ``timestamps`` ``(S,)`` ms) per file. Decoding runs in worker processes, overlapped
with the encoder (:func:`audiomaepp.embedding.embed_files`); a file that cannot be decoded, or
whose decoder crashes its worker, is skipped and listed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np

from ..embedding.extractor import CPU_BATCH, CUDA_BATCH
from ..frontend import SAMPLE_RATE
from .options import add_dtype_flag

log = logging.getLogger("audiomaepp.embed")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="compute scene (and timestamp) embeddings for audio files")
    p.add_argument(
        "model_dir",
        help="model directory (save_pretrained / convert-release output) or Hub repo id",
    )
    p.add_argument(
        "inputs", nargs="+", help="audio files, folders (recursive), globs or .txt lists"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--timestamps", action="store_true", help="also write timestamp embeddings")
    p.add_argument(
        "--layout", choices=["release", "time_major"], help="token layout (default: the model's)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"2-s chunks per encoder call (default {CPU_BATCH} on CPU, {CUDA_BATCH} on CUDA)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    add_dtype_flag(p)
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="torch (oneDNN-fused on CPU) or ONNX Runtime (CPU; float32, or int8 with --dtype"
        " int8)",
    )
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..audio import find_audio_files
    from ..embedding import Embedder, embed_files

    files = find_audio_files(args.inputs)
    if not files:
        log.error("no audio files found in %s", " ".join(args.inputs))
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.timestamps:
        (out / "timestamps").mkdir(exist_ok=True)
    embedder = Embedder.from_dir(
        args.model_dir,
        device=args.device,
        batch_size=args.batch_size,
        layout=args.layout,
        dtype=args.dtype if args.backend == "torch" else "float32",
    )
    if args.backend == "onnxruntime":
        from ..export.onnx import use_onnxruntime

        use_onnxruntime(embedder, "int8" if args.dtype == "int8" else "float32")
    log.info("embedding with %s", embedder.describe())
    scene = np.lib.format.open_memmap(
        out / "scene.npy",
        mode="w+",
        dtype=np.float32,
        shape=(len(files), embedder.scene_embedding_size),
    )
    samples: dict[int, int] = {}  # row -> samples at 16 kHz
    skipped: list[tuple[int, str]] = []
    bar = tqdm(total=len(files), unit="file", desc="embed")
    for item in embed_files(
        embedder,
        files,
        workers=args.workers,
        timestamps=args.timestamps,
        on_decoded=lambda _row: bar.update(1),
    ):
        if item.embedding is None:
            skipped.append((item.row, item.error))
            log.warning("skipped %s", item.error)
            continue
        samples[item.row] = item.num_samples
        if args.timestamps:
            scene[item.row] = item.embedding.mean(axis=0)
            stamps = embedder.plan(item.num_samples).timestamps().numpy()
            np.savez(
                out / "timestamps" / f"{item.row:08d}.npz",
                embeddings=item.embedding,
                timestamps=stamps,
                **{k: np.array(str(v)) for k, v in embedder.describe().items()},
            )
        else:
            scene[item.row] = item.embedding
    bar.close()
    scene.flush()
    _write_index(out, files, samples, skipped, embedder)
    print(f"wrote {out}: {len(samples)} embedded, {len(skipped)} skipped; scene.npy {scene.shape}")
    return 0 if samples else 1


def _write_index(
    out: Path, files: list[Path], samples: dict[int, int], skipped: list, embedder
) -> None:
    from ..embedding.precision import cpu_features

    with open(out / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "status", "seconds", "steps", "path"])
        for row, path in enumerate(files):
            n = samples.get(row)
            status, seconds, steps = (
                ("ok", n / SAMPLE_RATE, embedder.plan(n).num_steps) if n else ("skipped", 0.0, 0)
            )
            w.writerow([row, status, f"{seconds:.3f}", steps, str(path)])
    with open(out / "skipped.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "reason"])
        w.writerows(sorted(skipped))
    meta = {
        **embedder.describe(),  # model, layout, precision and backend that ran, device
        "cpu": cpu_features().model,
        "embedding_size": embedder.scene_embedding_size,
        "files": len(files),
        "embedded": len(samples),
        "skipped": len(skipped),
    }
    (out / "embedder.json").write_text(json.dumps(meta, indent=2) + "\n")
