"""``audiomaepp embed MODEL_DIR INPUTS... --out OUT_DIR``: embeddings for files, folders or lists.

Writes ``scene.npy`` ``(n_files, 5 D)`` float32 (a memory-mapped file, so millions of rows never
sit in RAM), ``index.csv`` (row, status, seconds, steps, path), ``skipped.csv`` for files that
could not be read, and with ``--timestamps`` one ``timestamps/<row>.npz`` (``embeddings``
``(S, 5 D)``, ``timestamps`` ``(S,)`` ms) per file. Decoding runs in worker processes, overlapped
with the encoder.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("audiomaepp.embed")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="compute scene (and timestamp) embeddings for audio files")
    p.add_argument("model_dir", help="model directory (save_pretrained / convert-release output)")
    p.add_argument("inputs", nargs="+", help="audio files, folders (recursive), globs or .txt lists")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--timestamps", action="store_true", help="also write timestamp embeddings")
    p.add_argument("--layout", choices=["release", "time_major"], help="token layout (default: the model's)")
    p.add_argument("--batch-size", type=int, default=256, help="2-s chunks per encoder call")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.set_defaults(func=run)


class _Decoded:
    """Map-style dataset: row -> (row, waveform or None, error message)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, row: int):
        from ..audio import load_audio
        from ..errors import InvalidAudioError

        try:
            return row, load_audio(self.files[row]), ""
        except InvalidAudioError as exc:
            return row, None, str(exc)
        except OSError as exc:
            return row, None, f"{self.files[row]}: {exc}"


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..audio import find_audio_files
    from ..embedding import Embedder

    files = find_audio_files(args.inputs)
    if not files:
        log.error("no audio files found in %s", " ".join(args.inputs))
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.timestamps:
        (out / "timestamps").mkdir(exist_ok=True)
    embedder = Embedder.from_dir(args.model_dir, device=args.device, batch_size=args.batch_size,
                                 layout=args.layout, dtype=args.dtype)
    scene = np.lib.format.open_memmap(out / "scene.npy", mode="w+", dtype=np.float32,
                                      shape=(len(files), embedder.scene_embedding_size))
    loader = torch.utils.data.DataLoader(_Decoded(files), batch_size=None, num_workers=args.workers)
    good_rows: list[int] = []  # position in the embedder's stream -> row
    samples: dict[int, int] = {}  # row -> samples at 16 kHz
    skipped: list[tuple[int, str]] = []
    bar = tqdm(total=len(files), unit="file", desc="embed")

    def clips():  # decoded files in order; bad ones are recorded and left out
        for row, wav, error in loader:
            bar.update(1)
            if wav is None:
                skipped.append((row, error))
                log.warning("skipped %s", error)
                continue
            good_rows.append(row)
            samples[row] = len(wav)
            yield wav

    for pos, result in embedder.iter_embeddings(clips(), timestamps=args.timestamps):
        row = good_rows[pos]
        if args.timestamps:
            scene[row] = result.mean(dim=0).numpy()
            stamps = embedder.plan(samples[row]).timestamps().numpy()
            np.savez(out / "timestamps" / f"{row:08d}.npz", embeddings=result.numpy(), timestamps=stamps)
        else:
            scene[row] = result.numpy()
    bar.close()
    scene.flush()
    _write_index(out, files, samples, skipped, embedder)
    print(f"wrote {out}: {len(good_rows)} embedded, {len(skipped)} skipped; scene.npy {scene.shape}")
    return 0 if good_rows else 1


def _write_index(out: Path, files: list[Path], samples: dict[int, int], skipped: list, embedder) -> None:
    with open(out / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "status", "seconds", "steps", "path"])
        for row, path in enumerate(files):
            n = samples.get(row)
            status, seconds, steps = ("ok", n / 16000, embedder.plan(n).num_steps) if n else ("skipped", 0.0, 0)
            w.writerow([row, status, f"{seconds:.3f}", steps, str(path)])
    with open(out / "skipped.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "reason"])
        w.writerows(sorted(skipped))
    meta = {"model": embedder.name, "layout": embedder.layout, "embedding_size": embedder.scene_embedding_size,
            "files": len(files), "embedded": len(samples), "skipped": len(skipped)}
    (out / "embedder.json").write_text(json.dumps(meta, indent=2) + "\n")
