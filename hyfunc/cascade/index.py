"""The function index: per tool content hash, its function embedding and key-tower output.

Computed once per tool content and persisted (safetensors + JSON metadata), so a request
never re-reads the tool library; an edited tool has a new hash and is embedded again.
Search is one matrix product per batch, masked to each request's own tools.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hyfunc.schema import Tool


@dataclass
class SearchHit:
    tool: Tool
    score: float


class FunctionIndex:
    def __init__(self, key_version: str = ""):
        self.key_version = key_version  # retriever + intent versions the keys were made with
        self.hashes: list[str] = []
        self.names: list[str] = []
        self.embeddings = torch.zeros(0, 0)
        self.keys = torch.zeros(0, 0)
        self._row: dict[str, int] = {}
        self.embedded_count = 0  # tools embedded by this process (new or changed), for tests

    def __len__(self) -> int:
        return len(self.hashes)

    def __contains__(self, content_hash: str) -> bool:
        return content_hash in self._row

    def ensure(
        self,
        tools: list[Tool],
        embed: Callable[[list[Tool]], torch.Tensor],
        encode_keys: Callable[[torch.Tensor], torch.Tensor],
    ) -> list[Tool]:
        """Embed the tools not yet indexed (by content hash); returns those that were new."""
        new: dict[str, Tool] = {}
        for tool in tools:
            h = tool.content_hash()
            if h not in self._row and h not in new:
                new[h] = tool
        if not new:
            return []
        fresh = list(new.values())
        emb = embed(fresh).float().cpu()
        keys = encode_keys(emb).float().cpu()
        if len(self.hashes) == 0:
            self.embeddings, self.keys = emb, keys
        else:
            self.embeddings = torch.cat([self.embeddings, emb])
            self.keys = torch.cat([self.keys, keys])
        for h, tool in new.items():
            self._row[h] = len(self.hashes)
            self.hashes.append(h)
            self.names.append(tool.name)
        self.embedded_count += len(fresh)
        return fresh

    def rows(self, tools: list[Tool]) -> list[int]:
        return [self._row[t.content_hash()] for t in tools]

    def search(self, queries: torch.Tensor, tool_lists: list[list[Tool]], top_k: int) -> list[list[SearchHit]]:
        """Rank each request's own tools by cosine score; one product for the whole batch."""
        if queries.shape[0] != len(tool_lists):
            raise ValueError("one tool list per query")
        scores = queries.float().cpu() @ self.keys.T  # (B, N)
        results = []
        for b, tools in enumerate(tool_lists):
            rows = torch.tensor(self.rows(tools), dtype=torch.long)
            row_scores = scores[b, rows]
            order = torch.argsort(row_scores, descending=True, stable=True)[:top_k]
            results.append([SearchHit(tools[int(i)], float(row_scores[int(i)])) for i in order])
        return results

    # -- persistence ------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings.contiguous(), "keys": self.keys.contiguous()}, str(directory / "index.safetensors"))
        meta = {"key_version": self.key_version, "hashes": self.hashes, "names": self.names}
        tmp = directory / "index.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(directory / "index.json")

    @classmethod
    def load(cls, directory: str | Path, key_version: str = "") -> FunctionIndex:
        """Load a saved index; an index made with other models is discarded (returns empty)."""
        directory = Path(directory)
        index = cls(key_version)
        meta_path = directory / "index.json"
        if not meta_path.exists():
            return index
        meta = json.loads(meta_path.read_text())
        if key_version and meta.get("key_version") != key_version:
            return index
        tensors = load_file(str(directory / "index.safetensors"))
        if tensors["keys"].shape[0] != len(meta["hashes"]):
            return index  # torn write: rebuild rather than trust it
        index.hashes = list(meta["hashes"])
        index.names = list(meta["names"])
        index.embeddings = tensors["embeddings"]
        index.keys = tensors["keys"]
        index._row = {h: i for i, h in enumerate(index.hashes)}
        return index
