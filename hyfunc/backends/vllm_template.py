"""The template machine inside vLLM's engine: a logits processor that enforces each job's program.

vLLM runs its engine core in another process and calls logits processors there, once per step
for the whole batch. A job's program (a Python generator) cannot travel to that process, so the
request carries what the program is built from (``SamplingParams.extra_args["hyfunc"]``: the
candidate tools, the query, the retriever's prior, the machine limits and budgets) and this
processor builds the very same program there, on a ``TemplateMachine`` over the served
tokenizer. Each step, for each of our requests, it feeds the program the token vLLM emitted
last (``ProgramCursor``) and then leaves one choice in that request's logits row:

- while an injection is being spelled out, only its next token (vLLM emits one token per step,
  so an injected chunk costs a step per token here, not one pass as in our decoder);
- at a decision, only the allowed tokens, plus the retriever's log-prior on the first function
  name (the same ``logits + bias`` argmax as ``BatchSampler``); free strings get their vocabulary
  mask; copy spans are ordinary allowed sets of the per-job program;
- once the program has ended (or failed), only the stop token, so the request finishes;
- with jump-forward on, also the stop token where the program injects two or more tokens before
  its next decision: the request ends there and the backend submits the next one with the
  injection appended to its prompt (one prefill, mostly from the prefix cache, instead of one
  step per injected token). Such a request brings the answer so far (``answer``), which its
  program is fast-forwarded through first.

Greedy decoding (``temperature=0``) then takes the argmax of the row, ties to the lowest id, as
our sampler does. This is the V1 model runner's logits-processor interface
(``vllm.v1.sample.logits_processor``); the backend selects that runner (``VLLM_USE_V2_MODEL_RUNNER=0``).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from hyfunc.backends.cursor import ProgramCursor
from hyfunc.cascade.scheduler import Budgets
from hyfunc.cascade.template import CALL_OPEN, MachineLimits, TemplateMachine
from hyfunc.schema import Tool

EXTRA_KEY = "hyfunc"  # SamplingParams.extra_args[EXTRA_KEY]: the job's program spec


def program_args(
    tools: list[Tool],
    source: str | None,
    prior: list[float] | None,
    limits: MachineLimits,
    budgets: Budgets,
    answer: list[int] | None = None,
    jump: bool = False,
    allow_no_call: bool = True,
) -> dict[str, Any]:
    """A job's program spec as plain data (what ``extra_args`` can carry to the engine process):
    ``answer``, the answer tokens already in the prompt; ``jump``, stop before injections;
    ``allow_no_call``, whether "no call" is offered (ProgramSpec.allow_no_call)."""
    return {
        "answer": list(answer or []),
        "jump": jump,
        "tools": [tool.to_json() for tool in tools],
        "source": source,
        "prior": prior,
        "allow_no_call": allow_no_call,
        "limits": {name: getattr(limits, name) for name in MachineLimits.__dataclass_fields__},
        "budgets": {"max_job_tokens": budgets.max_job_tokens, "max_call_tokens": budgets.max_call_tokens},
    }


class RowConstraint:
    """One request's program, applied to its logits row each step."""

    def __init__(self, cursor: ProgramCursor, stop_id: int, masks: dict[int, torch.Tensor], jump: bool = False):
        self.cursor = cursor
        self.stop_id = stop_id
        self.jump = jump
        self.seen = 0  # output tokens already fed to the cursor
        self._masks = masks  # the processor's device copies of the machine's vocabulary masks

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        cursor = self.cursor
        while self.seen < len(output_ids):
            if not cursor.finished:
                cursor.accept(output_ids[self.seen])
            self.seen += 1
        token = cursor.next_forced()
        if token is None and cursor.done:
            token = self.stop_id
        elif self.jump and not cursor.done and len(cursor.forced) >= 2:
            token = self.stop_id  # hand the injection back: the next request carries it in its prompt
        if token is not None:
            logits.fill_(float("-inf"))
            logits[token] = 0.0
            return logits
        step = cursor.pending
        assert step is not None
        allowed = step.allowed
        if isinstance(allowed, torch.Tensor):
            logits.masked_fill_(~self._device_mask(allowed, logits), float("-inf"))
            return logits
        ids = torch.tensor([t for t in allowed if 0 <= t < logits.shape[0]], dtype=torch.long, device=logits.device)
        kept = logits[ids]
        if step.bias is not None:
            bias = [b for t, b in zip(allowed, step.bias, strict=True) if 0 <= t < logits.shape[0]]
            kept = kept + torch.tensor(bias, dtype=logits.dtype, device=logits.device)
        logits.fill_(float("-inf"))
        logits[ids] = kept
        return logits

    def _device_mask(self, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # The machine hands out a few constant masks: keep one device copy of each (by identity).
        key = id(mask)
        hit = self._masks.get(key)
        if hit is None or hit.shape[0] != logits.shape[0] or hit.device != logits.device:
            hit = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
            n = min(logits.shape[0], mask.numel())
            hit[:n] = mask[:n].to(logits.device)
            self._masks[key] = hit
        return hit


class ForcedTokens:
    """Forced decoding (``hyfunc bench backends``): a given token sequence, one per step, then stop."""

    def __init__(self, tokens: list[int], stop_id: int):
        self.tokens = list(tokens)
        self.stop_id = stop_id

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        n = len(output_ids)
        token = self.tokens[n] if n < len(self.tokens) else self.stop_id
        logits.fill_(float("-inf"))
        logits[token] = 0.0
        return logits


class TemplateLogitsProcessor(AdapterLogitsProcessor):
    """vLLM logits processor: requests with ``extra_args["hyfunc"]`` follow their template program."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        super().__init__(vllm_config, device, is_pin_memory)
        from transformers import AutoTokenizer

        from hyfunc.models.soft_slot import ensure_soft_slot

        model_config = vllm_config.model_config
        self.tokenizer = AutoTokenizer.from_pretrained(model_config.tokenizer)
        ensure_soft_slot(self.tokenizer)
        self.logits_size = int(model_config.get_vocab_size())
        self._machines: dict[tuple, TemplateMachine] = {}
        self._masks: dict[int, torch.Tensor] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it decides the argmax: greedy requests must run it too

    def machine(self, limits: dict[str, Any]) -> TemplateMachine:
        key = tuple(sorted(limits.items()))
        machine = self._machines.get(key)
        if machine is None:
            # Vocabulary tables are compiled once per tokenizer (constraints.compile_vocab) and
            # shared by machines with different limits.
            machine = TemplateMachine(self.tokenizer, MachineLimits(**limits), logits_size=self.logits_size)
            self._machines[key] = machine
        return machine

    def new_req_logits_processor(self, params) -> RowConstraint | ForcedTokens | None:
        spec = (params.extra_args or {}).get(EXTRA_KEY)
        if spec is None:
            return None
        if "forced" in spec:  # a benchmark's forced decoding: these tokens, then the stop token
            return ForcedTokens(spec["forced"], spec["stop"])
        machine = self.machine(spec["limits"])
        tools = [Tool.model_validate(tool) for tool in spec["tools"]]
        try:
            program = machine.program(tools, source=spec["source"], prior=spec["prior"],
                                      allow_no_call=spec.get("allow_no_call", True))
        except Exception as err:  # noqa: BLE001 - the job fails alone (ours reports the same error)
            program = _failing(err)
        cursor = ProgramCursor(program, Budgets(**spec["budgets"]), machine.encode(CALL_OPEN)[0])
        for token in spec.get("answer", ()):  # the answer so far is in the prompt: fast-forward
            if not cursor.finished:
                cursor.accept(token)
        return RowConstraint(cursor, machine.encode(machine.end_text)[0], self._masks, bool(spec.get("jump")))


def _failing(err: Exception):
    raise err
    yield  # pragma: no cover - makes this a generator
