"""Baselines: one causal model writes the whole call, all candidate tools in its prompt.

This is the usual way to call functions with an LLM (Qwen's chat template: the tools' JSON
schemas in the system prompt, the answer as `<tool_call>` JSON). Run with the LML it is
baseline (a) "LML only"; with the LMS, baseline (b) "LMS only" (no soft token, no templating).

Decoding is plain greedy on a KV cache, one token per forward pass. A model that was not
trained to write calls runs in *forced* mode: each step feeds the gold answer's next token
instead of its own argmax (the argmax is still computed, so the step costs what a free step
costs), and the timing reflects the true token count of the full call.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from hyfunc.bench.workload import full_call_text
from hyfunc.models.compat import cache_kwargs
from hyfunc.schema import Call, Tool

BASELINE_SYSTEM = "You are a function-calling assistant."


def full_call_prompt(query: str, tools: list[Tool]) -> str:
    """Qwen's tool-use chat template: every candidate's full JSON schema, then the query."""
    schemas = "\n".join(json.dumps(t.to_json(), ensure_ascii=False) for t in tools)
    return (
        f"<|im_start|>system\n{BASELINE_SYSTEM}\n\n# Tools\n\nYou may call one or more functions to assist "
        "with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{schemas}\n</tools>\n\nFor each function call, return a json object with function name and "
        "arguments within <tool_call></tool_call> XML tags.<|im_end|>\n"
        f"<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n"
    )


@dataclass
class BaselineResult:
    ms: float
    prompt_tokens: int
    generated: int
    forward_passes: int
    agreed: int  # forced steps where the model's own argmax was the gold token


class FullCallBaseline:
    """Greedy full-call decoding with one causal LM (HF *ForCausalLM) and its tokenizer."""

    def __init__(self, model, tokenizer, device: torch.device, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.name = name
        self.forward_passes = 0
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.eos_id = int(eos)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    @torch.inference_mode()
    def run(self, query: str, tools: list[Tool], gold: list[Call] | None, max_new_tokens: int = 512) -> BaselineResult:
        """One call, batch size 1. With `gold`, forced mode; without, free greedy until <|im_end|>."""
        prompt = self.encode(full_call_prompt(query, tools))
        target = self.encode(full_call_text(gold)) if gold is not None else None
        limit = len(target) if target is not None else max_new_tokens
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([prompt], device=self.device)
        passes = generated = agreed = 0
        position = 0
        while True:
            positions = torch.arange(position, position + ids.shape[1], device=self.device).unsqueeze(0)
            out = self.model(input_ids=ids, position_ids=positions, **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
            passes += 1
            position += ids.shape[1]
            choice = int(torch.argmax(out.logits[0, -1]).item())
            token = target[generated] if target is not None else choice
            agreed += int(choice == token)
            generated += 1
            if generated >= limit or (target is None and token == self.eos_id):
                break  # the last token is chosen, never fed back
            ids = torch.tensor([[token]], device=self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1000
        self.forward_passes += passes
        return BaselineResult(ms, len(prompt), generated, passes, agreed)
