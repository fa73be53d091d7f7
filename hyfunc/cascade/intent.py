"""The intent model (LML): each query is read once, in one batched forward pass, and distilled
into a soft token.

A causal LM's soft token is its final-layer hidden state at the position where the answer
would begin (the last prompt token). A sentence encoder's is its mean-pooled output. Function
embeddings are the same model's hidden states mean-pooled over a tool's text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hyfunc.cascade.prompts import intent_prompt, tool_text
from hyfunc.cascade.widths import length_buckets
from hyfunc.schema import Tool


@dataclass
class IntentOutput:
    soft_tokens: torch.Tensor  # (B, d) float32
    prompt_tokens: list[int]  # per query


class IntentEncoder:
    def __init__(
        self, model: nn.Module, tokenizer, kind: str, device: torch.device, max_length: int = 512, pad_slack: float = 0.25
    ):
        self.model = model
        self.pad_slack = pad_slack  # float("inf"): one pass padded to the longest query
        self.tokenizer = tokenizer
        self.kind = kind
        self.device = device
        self.max_length = max_length
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.forward_passes = 0  # every LML pass, for exact accounting in tests and benchmarks

    def _hidden(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=self.kind == "encoder",  # ChatML prompts carry their own markers
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        base = self.model.base_model if self.kind == "causal" else self.model
        self.forward_passes += 1
        out = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state.float(), batch["attention_mask"]

    def _token_counts(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, add_special_tokens=self.kind == "encoder"
        )["input_ids"]
        return [len(ids) for ids in encoded]

    def _texts(self, queries: list[str]) -> list[str]:
        return [intent_prompt(q, self.tokenizer) for q in queries] if self.kind == "causal" else list(queries)

    def buckets(self, queries: list[str]) -> list[list[int]]:
        """The passes ``soft_tokens`` runs for these queries: indices per pass."""
        return self._buckets(self._texts(queries))

    def _buckets(self, texts: list[str]) -> list[list[int]]:
        if len(texts) <= 1:
            return [list(range(len(texts)))]
        return length_buckets(self._token_counts(texts), self.pad_slack)

    @torch.inference_mode()
    def soft_tokens(self, queries: list[str]) -> IntentOutput:
        texts = self._texts(queries)
        buckets = self._buckets(texts)
        soft: torch.Tensor | None = None
        counts = [0] * len(texts)
        for bucket in buckets:
            hidden, mask = self._hidden([texts[i] for i in bucket])
            lengths = mask.sum(dim=1)
            if self.kind == "causal":
                # Right padding: the answer would begin after each row's last real token.
                index = (lengths - 1).clamp(min=0)
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
            else:
                pooled = _mean_pool(hidden, mask)
            if soft is None:
                soft = pooled.new_empty(len(texts), pooled.shape[1])
            soft[torch.tensor(bucket, device=pooled.device)] = pooled
            for i, n in zip(bucket, lengths.tolist(), strict=True):
                counts[i] = int(n)
        assert soft is not None
        return IntentOutput(soft, counts)

    @torch.inference_mode()
    def function_embeddings(self, tools: list[Tool], batch_size: int = 32) -> torch.Tensor:
        chunks = []
        for start in range(0, len(tools), batch_size):
            texts = [tool_text(t) for t in tools[start : start + batch_size]]
            hidden, mask = self._hidden(texts)
            chunks.append(_mean_pool(hidden, mask))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.config.hidden_size)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
