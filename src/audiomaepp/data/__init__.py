"""Pretraining data: ``prepare_shards`` (audio -> log-mel shards + manifest) and the loader."""

from .loader import (
    CropDataset,
    FolderDataset,
    ShardDataset,
    make_loader,
    make_pretraining_dataset,
    worker_plan,
)
from .prepare import SKIP_REASONS, PrepareConfig, PrepareReport, prepare_shards, process_file
from .shards import load_manifest, merge_manifests

__all__ = [
    "SKIP_REASONS",
    "PrepareConfig",
    "PrepareReport",
    "prepare_shards",
    "process_file",
    "load_manifest",
    "merge_manifests",
    "CropDataset",
    "ShardDataset",
    "FolderDataset",
    "worker_plan",
    "make_pretraining_dataset",
    "make_loader",
]
