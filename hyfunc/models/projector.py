"""SoftTokenProjector: maps the LML soft token into the LMS embedding space (continuous prompting)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class ProjectorConfig:
    input_dim: int
    output_dim: int
    hidden_dim: int = 512
    num_tokens: int = 1  # how many LMS prefix embeddings one soft token becomes


class SoftTokenProjector(nn.Module):
    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(
            nn.Linear(config.input_dim, config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.output_dim * config.num_tokens),
        )

    def forward(self, soft_tokens: torch.Tensor) -> torch.Tensor:
        """(B, input_dim) -> (B, num_tokens, output_dim)."""
        out = self.net(soft_tokens)
        return out.view(soft_tokens.shape[0], self.config.num_tokens, self.config.output_dim)

    def config_dict(self) -> dict:
        return asdict(self.config)
