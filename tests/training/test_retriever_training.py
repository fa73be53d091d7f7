"""Retriever training and threshold calibration on cached vectors."""

from __future__ import annotations

import torch

from hyfunc.data.loaders import Example
from hyfunc.models.retriever import RetrieverConfig
from hyfunc.schema import Call, Tool
from hyfunc.training.embed import EmbeddingCache, text_key
from hyfunc.training.retriever import calibrate_threshold, evaluate_retriever, train_retriever


def _tool(name: str) -> Tool:
    return Tool.model_validate({"name": name, "description": name, "parameters": {"type": "object", "properties": {}}})


def test_retriever_learns_and_calibrates(tmp_path):
    torch.manual_seed(0)
    tools = [_tool(f"f{i}") for i in range(6)]
    centers = torch.randn(6, 16) * 3
    cache = EmbeddingCache(tmp_path / "emb")
    cache.add_chunk([text_key("tool", t.content_hash()) for t in tools], centers + 0.1 * torch.randn(6, 16))
    examples = []
    for i in range(120):
        gold = i % 6
        if i % 10 == 9:
            query, answers = f"q{i} unrelated", []
            vec = torch.randn(16) * 0.2  # far from every tool
        else:
            query, answers = f"q{i}", [Call(name=f"f{gold}", arguments={})]
            vec = centers[gold] + 0.3 * torch.randn(16)
        cache.add_chunk([text_key("query", query)], vec[None])
        examples.append(Example(query=query, tools=tools, answers=answers))
    model, loss = train_retriever(examples[:80], cache, RetrieverConfig(input_dim=16, hidden_dim=32, output_dim=16), steps=150, batch_size=16, progress=False)
    r1, r3, threshold, gate = evaluate_retriever(model, examples[80:], cache, 3)
    assert r1 == 1.0 and r3 == 1.0
    assert gate >= 0.9
    assert loss < 0.5


def test_calibrate_threshold_separates():
    threshold, accuracy = calibrate_threshold([0.8, 0.9, 0.7], [0.1, 0.3])
    assert 0.3 < threshold < 0.7 and accuracy == 1.0
