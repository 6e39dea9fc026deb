"""The one path from audio to embeddings: decoding files (worker processes), chunking, the batched
front end, the encoder (no decoder), pooling and token layouts."""

from .extractor import Embedder
from .files import FileEmbedding, decode_file, embed_files
from .layout import LAYOUTS, ChunkPlan, group_tokens, plan_chunks

__all__ = [
    "Embedder",
    "FileEmbedding",
    "decode_file",
    "embed_files",
    "LAYOUTS",
    "ChunkPlan",
    "group_tokens",
    "plan_chunks",
]
