"""Frozen-encoder embeddings: chunking, token layouts, scene and timestamp embeddings."""

from .extractor import Embedder, SceneEmbedder, resolve_device
from .layout import LAYOUTS, ChunkPlan, group_tokens, plan_chunks

__all__ = ["Embedder", "SceneEmbedder", "resolve_device", "LAYOUTS", "ChunkPlan", "group_tokens", "plan_chunks"]
