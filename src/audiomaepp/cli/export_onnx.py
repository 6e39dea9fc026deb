"""``audiomaepp export-onnx MODEL_DIR OUT.onnx``: the front end and encoder as one ONNX graph.

Waveform ``(batch, samples)`` at 16 kHz in; ``scene`` ``(batch, 5 D)``, ``embeddings``
``(batch, steps, 5 D)`` and ``timestamps`` ``(batch, steps)`` ms out; batch and length dynamic.
Needs the ``[onnx]`` extra.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("audiomaepp.export_onnx")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx", help="export front end + encoder to ONNX (waveform in, embeddings out)"
    )
    p.add_argument("model_dir", help="model directory or Hugging Face Hub repo id")
    p.add_argument("out", help="output .onnx file")
    p.add_argument(
        "--layout", choices=["release", "time_major"], help="token layout (default: the model's)"
    )
    p.add_argument(
        "--check", action="store_true", help="run the exported graph with onnxruntime and compare"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        log.error("ONNX export needs the onnx extra: pip install 'audiomaepp[onnx]'")
        return 2
    from ..embedding import Embedder
    from ..export.onnx import check_onnx, export_onnx

    embedder = Embedder.from_dir(args.model_dir, device="cpu", layout=args.layout, dtype="float32")
    path = export_onnx(embedder, args.out)
    print(
        f"wrote {path} (layout {embedder.layout}, embedding size {embedder.scene_embedding_size})"
    )
    if args.check:
        err = check_onnx(embedder, path)
        print(f"onnxruntime vs PyTorch: max abs difference {err:.2e}")
        return 0 if err <= 1e-4 else 1
    return 0
