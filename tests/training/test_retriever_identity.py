"""The residual retriever starts as the identity over the intent embedding (issue 9, part 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hyfunc.data.loaders import Example
from hyfunc.models.bundle import load_retriever, save_module
from hyfunc.models.retriever import Retriever, RetrieverConfig, identity_retriever
from hyfunc.schema import Call, Tool
from hyfunc.training.embed import EmbeddingCache, text_key
from hyfunc.training.retriever import evaluate_retriever, split_by_tool, train_general_retriever

REPO = Path(__file__).resolve().parents[2]


def test_untrained_residual_retriever_is_normalize():
    torch.manual_seed(0)
    model = Retriever(RetrieverConfig(input_dim=24, hidden_dim=16, output_dim=7, tower="residual"))
    assert model.config.output_dim == 24  # a residual tower keeps the input width
    x, y = torch.randn(5, 24), torch.randn(9, 24)
    assert torch.equal(model.encode_queries(x), F.normalize(x, dim=-1))
    assert torch.equal(model.encode_keys(y), F.normalize(y, dim=-1))
    cosine = F.cosine_similarity(x[:, None, :], y[None, :, :], dim=-1)
    assert torch.allclose(model.encode_queries(x) @ model.encode_keys(y).T, cosine, atol=1e-6)
    assert torch.equal(identity_retriever(24).encode_queries(x), F.normalize(x, dim=-1))


def test_mlp_tower_is_not_the_identity_and_old_configs_still_load(tmp_path):
    """Configs written before `tower` existed (the shipped demo retriever) load as the MLP towers."""
    config = json.loads((REPO / "models" / "demo" / "retriever" / "config.json").read_text())
    assert "tower" not in config
    demo = load_retriever(REPO / "models" / "demo" / "retriever")
    assert demo.config.tower == "mlp"
    x = torch.randn(3, demo.config.input_dim)
    assert not torch.allclose(demo.encode_queries(x)[:, : 8], F.normalize(x, dim=-1)[:, : 8])
    with pytest.raises(ValueError, match="retriever tower 'deep'"):
        RetrieverConfig(input_dim=4, tower="deep")
    residual = identity_retriever(12, hidden_dim=8)
    save_module(residual, residual.config_dict(), tmp_path / "r")
    again = load_retriever(tmp_path / "r")
    assert again.config.tower == "residual" and torch.equal(again.encode_queries(x[:, :12]), F.normalize(x[:, :12], dim=-1))


def _tool(name: str) -> Tool:
    return Tool.model_validate({"name": name, "description": name, "parameters": {"type": "object", "properties": {}}})


def test_training_moves_the_identity_where_cosine_is_wrong(tmp_path):
    """Queries lie near a *mixed-up* tool in raw cosine (query for f_i sits at tool f_{i+1}'s
    vector plus a shared offset): the identity retriever ranks wrong, training fixes it, on tools
    held out from training too (the map is the same for every tool)."""
    torch.manual_seed(0)
    dim, n_tools = 16, 40
    tools = [_tool(f"f{i}") for i in range(n_tools)]
    centers = torch.randn(n_tools, dim)
    cache = EmbeddingCache(tmp_path / "emb")
    cache.add_chunk([text_key("tool", t.content_hash()) for t in tools], centers)
    rotation = torch.linalg.qr(torch.randn(dim, dim))[0]
    examples, keys, vectors = [], [], []
    for i in range(600):
        gold = i % n_tools
        query = f"q{i}"
        keys.append(text_key("query", query))
        vectors.append(centers[gold] @ rotation + 0.05 * torch.randn(dim))
        others = [t for j, t in enumerate(tools) if j != gold]
        candidates = [tools[gold], *[others[(i * 7 + k) % len(others)] for k in range(4)]]
        examples.append(Example(query=query, tools=candidates, answers=[Call(name=f"f{gold}", arguments={})]))
    cache.add_chunk(keys, torch.stack(vectors))
    train, held = split_by_tool(examples, heldout_share=0.1, seed=0)
    held_tools = {c.name for ex in held for c in ex.answers}
    assert held_tools and not held_tools & {c.name for ex in train for c in ex.answers}
    before = evaluate_retriever(identity_retriever(dim, 32), held, cache, 3)[0]
    model, report = train_general_retriever(examples, cache, steps=100, batch_size=32, lr=3e-3, hidden_dim=64, progress=False)
    assert model.config.tower == "residual"
    assert report["untrained"]["recall_at_1"] == pytest.approx(before, abs=1e-4)
    assert before < 0.6 and report["trained"]["recall_at_1"] > before + 0.2, report


def test_compare_retrievers_in_one_run_with_bm25():
    """An encoder that puts each BFCL query exactly on its gold tool's vector: the identity
    retriever then ranks the gold first (recall@1 = 1 on `multiple`); a retriever that negates
    the query side ranks it last. BM25 is scored on the same examples."""
    pytest.importorskip("bfcl_eval")
    from hyfunc.cascade.intent import IntentOutput
    from hyfunc.data.loaders import load_bfcl_category
    from hyfunc.eval.bfcl import compare_retrievers

    examples = load_bfcl_category("multiple", progress=False, check_answers=False)[0][:12]
    names = sorted({t.name for ex in examples for t in ex.tools})
    gold_of = {ex.query: ex.answers[0].name for ex in examples}
    dim = len(names)

    class OracleEncoder:
        def soft_tokens(self, queries):
            return IntentOutput(torch.stack([F.one_hot(torch.tensor(names.index(gold_of[q])), dim).float() for q in queries]),
                                [1] * len(queries))

        def function_embeddings(self, tools):
            return torch.stack([F.one_hot(torch.tensor(names.index(t.name)), dim).float() for t in tools])

    class Negated(torch.nn.Module):
        def encode_queries(self, x):
            return -F.normalize(x, dim=-1)

        def encode_keys(self, x):
            return F.normalize(x, dim=-1)

    out = compare_retrievers(OracleEncoder(), {"identity": identity_retriever(dim, 8), "negated": Negated()},
                             ["multiple"], limit=12, thresholds={"identity": 0.5, "negated": 0.5})
    entry = out["multiple"]
    assert entry["examples"] == 12 and entry["questions"] == 12
    assert entry["gate_pass"] == {"identity": 1.0, "negated": 0.0}  # cosine 1 vs at most 0
    assert entry["identity"] == {"recall@1": 1.0, "recall@3": 1.0, "r_precision": 1.0}
    assert entry["negated"]["recall@1"] == 0.0
    assert 0.0 <= entry["bm25"]["recall@1"] <= 1.0


def test_cli_registers_eval_retrieval():
    from hyfunc.cli import build_parser

    args = build_parser().parse_args(["eval", "retrieval", "--retriever", "identity", "--retriever", "seal=runs/x",
                                      "--limit", "50", "--categories", "multiple"])
    assert args.retriever == ["identity", "seal=runs/x"] and args.limit == 50 and args.categories == ["multiple"]


def test_training_recipe_selects_the_tower():
    from hyfunc.training.pipeline import Recipe

    assert Recipe.from_dict({}).retriever_tower == "mlp"  # the shipped demo recipe is unchanged
    assert Recipe.from_dict({"retriever_tower": "residual"}).retriever_tower == "residual"
    with pytest.raises(ValueError, match="retriever tower 'cnn'"):
        RetrieverConfig(input_dim=8, tower="cnn")
