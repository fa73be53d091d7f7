"""A small causal intent model (LML) trained from scratch, and its measured comparison with a
pretrained sentence encoder as the cascade's intent model.

The from-scratch LML is a Qwen3-architecture model trained with next-token prediction on the
training queries (in the LML prompt, as the cascade feeds them) and on the tool texts the
function index embeds. Both candidates then go through the same retriever recipe on the same
data, and are compared on held-out retriever recall and relevance-gate accuracy: the soft
token's two jobs are to pick the function and to say whether any function fits.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hyfunc.cascade.prompts import intent_prompt, tool_text
from hyfunc.data.loaders import Example
from hyfunc.training.pipeline import LMSArch


@dataclass
class IntentLMConfig:
    arch: LMSArch = field(default_factory=LMSArch)  # same shape options as the LMS's
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0


def intent_corpus(train: list[Example]) -> list[str]:
    """What the LML reads at inference: queries in its prompt, and tool texts (function embeddings)."""
    texts = [intent_prompt(ex.query) for ex in train if ex.source != "augmented"]
    tools = {t.name: t for ex in train for t in ex.tools}
    return texts + [tool_text(t) for t in tools.values()]


def train_intent_lm(texts: list[str], tokenizer, cfg: IntentLMConfig, progress: bool = True):
    """Next-token prediction on ``texts``; returns the trained Qwen3ForCausalLM (eval mode)."""
    from transformers import Qwen3ForCausalLM

    from hyfunc.models.tiny import qwen3_config

    if not texts:
        raise ValueError("the intent model needs training text")
    torch.manual_seed(cfg.seed)
    arch = cfg.arch
    config = qwen3_config(len(tokenizer), arch.hidden, arch.layers, arch.heads, arch.kv_heads, arch.intermediate)
    config.pad_token_id = tokenizer.pad_token_id
    model = Qwen3ForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    encoded = [tokenizer.encode(t, add_special_tokens=False)[:256] for t in texts]
    pad = tokenizer.pad_token_id or 0
    rng = random.Random(cfg.seed)
    bar = tqdm(range(cfg.steps), desc="intent lm", disable=not progress)
    for step in bar:
        lr = cfg.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(cfg.batch_size)]
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, row in enumerate(batch):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        keep = mask[:, 1:].bool()
        loss = F.cross_entropy(logits[keep], ids[:, 1:][keep])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{float(loss):.3f}")
    return model.eval()


def compare_intent_models(recipe, lm: IntentLMConfig, progress: bool = True) -> dict[str, Any]:
    """Same data, same retriever recipe, two intent models: the recipe's (pretrained) one and a
    causal LML trained here from scratch. Returns per model: held-out recall@1/@k, gate accuracy,
    the calibrated threshold and the seconds its own training and embedding took."""
    from hyfunc.cascade.intent import IntentEncoder
    from hyfunc.models.retriever import RetrieverConfig
    from hyfunc.training.embed import EmbeddingCache, embed_all, query_vectors
    from hyfunc.training.pipeline import load_data, load_intent, train_tokenizer_stage
    from hyfunc.training.retriever import evaluate_retriever, train_retriever

    work = Path(recipe.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    train, heldout = load_data(recipe)
    queries = [ex.query for ex in train + heldout]
    tools = [t for ex in train + heldout for t in ex.tools]

    def measure(name: str, intent: IntentEncoder, cache_dir: Path, seconds: float) -> dict[str, Any]:
        started = time.time()
        cache = EmbeddingCache(cache_dir)
        embed_all(intent, cache, queries, tools, progress=progress)
        dim = int(query_vectors(cache, [train[0].query]).shape[1])
        rconf = RetrieverConfig(input_dim=dim, hidden_dim=recipe.retriever_hidden, output_dim=recipe.retriever_dim)
        retriever, _ = train_retriever(train, cache, rconf, steps=recipe.retriever_steps, seed=recipe.seed, progress=progress)
        r1, rk, threshold, gate = evaluate_retriever(retriever, heldout, cache, recipe.top_k)
        params = sum(p.numel() for p in intent.model.parameters())
        return {
            "intent": name,
            "parameters": params,
            "recall_at_1": round(r1, 4),
            f"recall_at_{recipe.top_k}": round(rk, 4),
            "gate_accuracy": round(gate, 4),
            "threshold": round(threshold, 4),
            "seconds": round(seconds + time.time() - started, 1),
        }

    results = [measure(f"{recipe.intent} ({recipe.intent_kind})", load_intent(recipe, recipe.device), work / "embeddings", 0.0)]

    started = time.time()
    tokenizer = train_tokenizer_stage(recipe, train, work)
    model = train_intent_lm(intent_corpus(train), tokenizer, lm, progress=progress)
    scratch = IntentEncoder(model, tokenizer, "causal", torch.device("cpu"))
    label = f"causal LML from scratch ({lm.arch.layers}x{lm.arch.hidden}, {lm.steps} steps)"
    results.append(measure(label, scratch, work / "intent_scratch_embeddings", time.time() - started))
    return {"heldout": len(heldout), "train": len(train), "results": results}
