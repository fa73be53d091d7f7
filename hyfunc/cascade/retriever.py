"""The dual-encoder retriever: two small MLP towers over LML vectors, trained with InfoNCE."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RetrieverConfig:
    input_dim: int
    hidden_dim: int = 256
    output_dim: int = 128
    temperature: float = 0.05


class MLPTower(nn.Module):
    """Linear -> GELU -> Linear with a linear skip, so an untrained tower is near the identity map."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, output_dim))
        self.skip = nn.Linear(input_dim, output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.inner(x) + self.skip(x), dim=-1)


class Retriever(nn.Module):
    """Query tower on soft tokens, key tower on function embeddings; cosine similarity."""

    def __init__(self, config: RetrieverConfig):
        super().__init__()
        self.config = config
        self.query_tower = MLPTower(config.input_dim, config.hidden_dim, config.output_dim)
        self.key_tower = MLPTower(config.input_dim, config.hidden_dim, config.output_dim)

    def encode_queries(self, soft_tokens: torch.Tensor) -> torch.Tensor:
        return self.query_tower(soft_tokens)

    def encode_keys(self, function_embeddings: torch.Tensor) -> torch.Tensor:
        return self.key_tower(function_embeddings)

    def config_dict(self) -> dict:
        return asdict(self.config)


def info_nce_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    positive: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE over a key pool.

    queries: (B, d) normalised; keys: (N, d) normalised — the batch's positives (in-batch
    negatives) plus each record's other candidate tools (hard negatives); positive: (B,) the
    index of each query's gold key; valid: optional (B, N) bool, False for keys that must not
    count as negatives for that query (another gold call of the same multi-call query).
    """
    logits = queries @ keys.T / temperature
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    return F.cross_entropy(logits, positive)
