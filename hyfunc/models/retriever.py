"""The dual-encoder retriever: two small MLP towers over LML vectors, trained with InfoNCE."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

TOWERS = ("mlp", "residual")


@dataclass
class RetrieverConfig:
    input_dim: int
    hidden_dim: int = 256
    output_dim: int = 128
    temperature: float = 0.05
    # "mlp": the original towers (random projection at init). "residual": the identity at init,
    # so an untrained retriever is the cosine of the intent model's query and tool embeddings
    # and training only moves it from there (output_dim is then input_dim).
    tower: str = "mlp"

    def __post_init__(self) -> None:
        if self.tower not in TOWERS:
            raise ValueError(f"retriever tower {self.tower!r}: expected one of {', '.join(TOWERS)}")
        if self.tower == "residual":
            self.output_dim = self.input_dim


class ResidualTower(nn.Module):
    """x + MLP(x), L2-normalised, with the MLP's last layer zero-initialised: at init the tower
    is exactly normalize(x). A pretrained sentence encoder's cosine already ranks tools for
    unseen queries; training adds a correction instead of learning the geometry from scratch."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))
        nn.init.zeros_(self.inner[2].weight)
        nn.init.zeros_(self.inner[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + self.inner(x), dim=-1)


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
        if config.tower == "residual":
            self.query_tower: nn.Module = ResidualTower(config.input_dim, config.hidden_dim)
            self.key_tower: nn.Module = ResidualTower(config.input_dim, config.hidden_dim)
        else:
            self.query_tower = MLPTower(config.input_dim, config.hidden_dim, config.output_dim)
            self.key_tower = MLPTower(config.input_dim, config.hidden_dim, config.output_dim)

    def encode_queries(self, soft_tokens: torch.Tensor) -> torch.Tensor:
        return self.query_tower(soft_tokens)

    def encode_keys(self, function_embeddings: torch.Tensor) -> torch.Tensor:
        return self.key_tower(function_embeddings)

    def config_dict(self) -> dict:
        return asdict(self.config)


def identity_retriever(input_dim: int, hidden_dim: int = 256, temperature: float = 0.05) -> Retriever:
    """The untrained residual retriever: scores are the cosine of the raw intent embeddings."""
    return Retriever(RetrieverConfig(input_dim=input_dim, hidden_dim=hidden_dim, temperature=temperature, tower="residual")).eval()


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
