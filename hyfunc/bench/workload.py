"""What the speed benchmarks run on: BFCL inputs and random-init bench models at a 13:1 ratio.

Inputs are BFCL v4 single-turn examples (simple, multiple, parallel, parallel_multiple) whose
gold calls the template machine can express. The bench models are random-init Qwen3 causal
LMs written in the models-directory layout, so `Cascade.load` reads them exactly as it reads
trained checkpoints. They are not trained to write calls: every model row decodes the gold
call's tokens as forced steps (one token per forward pass on a KV cache), so the timing
reflects the true number of tokens each approach has to produce.
"""

from __future__ import annotations

import json
import random
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyfunc.schema import Call, Tool

CALL_CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple")


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


# LML : LMS parameter ratio close to the paper's 8B : 0.6B (about 13 : 1) at a vocabulary of
# 4096; small enough that `hyfunc bench all` takes minutes on a laptop CPU.
BENCH_LML = ModelSize(hidden=384, layers=8, heads=6, kv_heads=2, intermediate=1280)
BENCH_LMS = ModelSize(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=320)
BENCH_VOCAB = 4096


@dataclass
class BenchInput:
    id: str
    category: str
    query: str
    tools: list[Tool]
    gold: list[Call]


def full_call_text(calls: list[Call]) -> str:
    """The whole answer as a model writes it without templating (Qwen's tool-call format),
    byte for byte the text the template machine produces for the same calls."""
    parts = []
    for call in calls:
        name = json.dumps(call.name, ensure_ascii=False)
        args = json.dumps(call.arguments, ensure_ascii=False)
        parts.append(f'<tool_call>\n{{"name": {name}, "arguments": {args}}}\n</tool_call>')
    return "\n".join(parts) + "<|im_end|>"


def bfcl_inputs(per_category: int, seed: int = 0, categories: tuple[str, ...] = CALL_CATEGORIES) -> list[BenchInput]:
    """Up to `per_category` examples of each category, a seeded sample (all when <= 0)."""
    from hyfunc.data.loaders import load_bfcl_category

    rng = random.Random(seed)
    out: list[BenchInput] = []
    for category in categories:
        examples, _ = load_bfcl_category(category, progress=False)
        examples = [ex for ex in examples if ex.answers]
        rng.shuffle(examples)
        if per_category > 0:
            examples = examples[:per_category]
        for ex in examples:
            out.append(BenchInput(ex.id or f"{category}-{ex.position}", category, ex.query, ex.tools, ex.answers))
    return out


def demo_inputs(n: int, seed: int = 1) -> list[BenchInput]:
    from hyfunc.data.demo_task import generate_demo_examples

    examples = generate_demo_examples("heldout", n, seed)
    return [BenchInput(f"demo-{i}", "demo", ex.query, ex.tools, ex.answers) for i, ex in enumerate(examples)]


def expressible(inputs: list[BenchInput], machine) -> tuple[list[BenchInput], int]:
    """Inputs whose gold calls the machine can write (teacher mode succeeds); and the count dropped."""
    from hyfunc.cascade.template import TemplateError

    kept = []
    for item in inputs:
        try:
            machine.teacher(item.tools, item.gold)
        except TemplateError:
            continue
        kept.append(item)
    return kept, len(inputs) - len(kept)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def write_bench_models(directory: str | Path, corpus: list[str], seed: int = 0) -> Path:
    """Random-init LML (causal) + LMS at ~13:1 with a BPE tokenizer trained on `corpus`."""
    import torch
    from transformers import Qwen3ForCausalLM

    from hyfunc.models.bundle import Manifest, save_module, stamp_versions
    from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector
    from hyfunc.models.retriever import Retriever, RetrieverConfig
    from hyfunc.models.tiny import qwen3_config
    from hyfunc.models.tokenizer import train_bpe_tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=BENCH_VOCAB)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for name, size in (("intent", BENCH_LML), ("lms", BENCH_LMS)):
        config = qwen3_config(len(tokenizer), size.hidden, size.layers, size.heads, size.kv_heads, size.intermediate)
        config.eos_token_id = eos
        Qwen3ForCausalLM(config).save_pretrained(str(directory / name))
        tokenizer.save_pretrained(str(directory / name))
    retriever = Retriever(RetrieverConfig(input_dim=BENCH_LML.hidden, hidden_dim=256, output_dim=128))
    save_module(retriever, retriever.config_dict(), directory / "retriever")
    projector = SoftTokenProjector(ProjectorConfig(input_dim=BENCH_LML.hidden, output_dim=BENCH_LMS.hidden, hidden_dim=256))
    save_module(projector, projector.config_dict(), directory / "projector")
    Manifest(intent_kind="causal", relevance_threshold=-1.0, name=f"bench-random-{seed}").write(directory)
    stamp_versions(directory)
    return directory


def bench_corpus(inputs: list[BenchInput]) -> list[str]:
    """Text the bench tokenizer is trained on: the inputs' queries, tools and gold answers."""
    from hyfunc.cascade.prompts import compact_schema, tool_text

    texts: list[str] = []
    for item in inputs:
        texts.append(item.query)
        texts.append(full_call_text(item.gold))
        for tool in item.tools:
            texts.append(tool_text(tool))
            texts.append(compact_schema(tool))
            texts.append(json.dumps(tool.to_json(), ensure_ascii=False))
    return texts


# -- forced decoding through the cascade's own decoder -------------------------------------------


def forced(program) -> Generator[Any, int | None, list[Call]]:
    """Wrap a teacher-mode program so every decision may only pick the gold token.

    The decoder then runs exactly the passes and injections the trained model would on a
    correct answer, whatever the random weights prefer.
    """
    from hyfunc.cascade.template import Generate, rewrite_steps

    return (yield from rewrite_steps(
        program, lambda step: Generate([step.gold], step.gold) if isinstance(step, Generate) else step
    ))
