"""`hyfunc train embed`: LML soft tokens for queries and function embeddings for tools.

Vectors are cached on disk by text hash, in chunks, so an interrupted run resumes where it
stopped and later stages (and later runs) never recompute a vector.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from hyfunc.cascade.intent import IntentEncoder
from hyfunc.schema import Tool


def text_key(kind: str, text: str) -> str:
    return hashlib.sha256(f"{kind}\0{text}".encode()).hexdigest()[:24]


class EmbeddingCache:
    """Append-only chunks of (key -> vector) under one directory."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.vectors: dict[str, torch.Tensor] = {}
        self._chunks = len(list(self.directory.glob("chunk-*.json")))
        for meta_path in sorted(self.directory.glob("chunk-*.json")):
            tensor_path = meta_path.with_suffix(".safetensors")
            if not tensor_path.exists():
                continue  # interrupted mid-write: that chunk is recomputed
            keys = json.loads(meta_path.read_text())
            data = load_file(str(tensor_path))["vectors"]
            self.vectors.update({k: data[i] for i, k in enumerate(keys)})

    def __contains__(self, key: str) -> bool:
        return key in self.vectors

    def add_chunk(self, keys: list[str], vectors: torch.Tensor) -> None:
        stem = self.directory / f"chunk-{self._chunks:05d}"
        self._chunks += 1
        save_file({"vectors": vectors.float().contiguous().cpu()}, str(stem) + ".safetensors")
        (stem.with_suffix(".json")).write_text(json.dumps(keys))
        self.vectors.update({k: vectors[i].float().cpu() for i, k in enumerate(keys)})

    def get(self, keys: list[str]) -> torch.Tensor:
        return torch.stack([self.vectors[k] for k in keys])


def embed_all(
    encoder: IntentEncoder,
    cache: EmbeddingCache,
    queries: list[str],
    tools: list[Tool],
    batch_size: int = 64,
    progress: bool = True,
) -> None:
    """Compute whatever is missing from the cache (queries' soft tokens, tools' embeddings)."""
    todo_q = sorted({q for q in queries if text_key("query", q) not in cache})
    for start in tqdm(range(0, len(todo_q), batch_size), desc="soft tokens", disable=not progress or not todo_q):
        batch = todo_q[start : start + batch_size]
        out = encoder.soft_tokens(batch)
        cache.add_chunk([text_key("query", q) for q in batch], out.soft_tokens)
    unique: dict[str, Tool] = {}
    for tool in tools:
        key = text_key("tool", tool.content_hash())
        if key not in cache:
            unique[key] = tool
    items = list(unique.items())
    for start in tqdm(range(0, len(items), batch_size), desc="function embeddings", disable=not progress or not items):
        batch = items[start : start + batch_size]
        vectors = encoder.function_embeddings([t for _, t in batch])
        cache.add_chunk([k for k, _ in batch], vectors)


def query_vectors(cache: EmbeddingCache, queries: list[str]) -> torch.Tensor:
    return cache.get([text_key("query", q) for q in queries])


def tool_vectors(cache: EmbeddingCache, tools: list[Tool]) -> torch.Tensor:
    return cache.get([text_key("tool", t.content_hash()) for t in tools])
