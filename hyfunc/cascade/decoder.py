"""The LMS decoder: runs one template-machine program per row over a single batched KV cache.

Per step every live row appends exactly one chunk on top of its cache: the token it just
generated followed by whatever fixed text the machine injects before its next decision. So a
mode switch (generate -> inject -> generate) never re-prefills anything. The prefill pass yields
every row's first decision and each later decision costs one pass, so a batch takes as many LMS
forward passes as its longest row makes decisions (1 + that row's decisions after the first);
the last decision and anything the machine injects after it are never fed.

Ragged rows are right-padded within a chunk; pads stay in the cache but are masked out of
attention forever (one growing 2D mask), and each row carries its own position ids. Rows that
finish are dropped from the cache so later passes only pay for live rows. The system-prompt
prefix is run once per process and its KV reused by every batch.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache

from hyfunc.cascade.prompts import SOFT_TOKEN, lms_shared_prefix
from hyfunc.cascade.sampler import BatchSampler
from hyfunc.cascade.template import Generate, Inject, Program, TemplateMachine
from hyfunc.schema import Call


@dataclass
class DecodeJob:
    prompt_ids: list[int]  # job-specific prompt (after the shared prefix), with soft-token slots
    soft_embeddings: torch.Tensor | None  # (num_soft, d_lms) for the slots, or None without slots
    program: Program


@dataclass
class RowStats:
    prompt_tokens: int = 0
    injected: int = 0
    generated: int = 0
    fed_tokens: int = 0  # tokens actually run through the LMS for this row (shared prefix excluded)
    forward_passes: int = 0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0


@dataclass
class DecodeResult:
    calls: list[Call] = field(default_factory=list)
    stats: RowStats = field(default_factory=RowStats)
    error: str | None = None


@dataclass
class _Row:
    job_index: int
    program: Program
    pending: Generate | None = None
    done: bool = False
    calls: list[Call] = field(default_factory=list)
    next_position: int = 0
    stats: RowStats = field(default_factory=RowStats)
    error: str | None = None


class LMSDecoder:
    def __init__(self, model: nn.Module, tokenizer, machine: TemplateMachine, device: torch.device):
        self.model = model
        self.tokenizer = tokenizer
        self.machine = machine
        self.device = device
        self.soft_id = tokenizer.convert_tokens_to_ids(SOFT_TOKEN)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.embed = model.get_input_embeddings()
        self.lm_head = model.get_output_embeddings()
        self.base = model.base_model
        self.vocab_size = int(self.lm_head.weight.shape[0])
        self.sampler = BatchSampler(self.lm_head, self.vocab_size)
        self._prefix_cache: DynamicCache | None = None
        self.prefix_ids = tokenizer.encode(lms_shared_prefix(), add_special_tokens=False)
        self.prefix_passes = 0  # shared-prefix prefills (once per process)
        self.forward_passes = 0  # all batched passes after the prefix

    # -- the shared prefix ---------------------------------------------------------------------------

    def _shared_prefix(self) -> DynamicCache:
        if self._prefix_cache is None:
            ids = torch.tensor([self.prefix_ids], device=self.device)
            cache = DynamicCache(config=self.model.config)
            with torch.inference_mode():
                self.base(input_ids=ids, cache=cache, use_cache=True)
            self.prefix_passes += 1
            self._prefix_cache = cache
        return self._prefix_cache

    # -- stepping programs ---------------------------------------------------------------------------

    @staticmethod
    def _advance(row: _Row, send: int | None) -> list[int]:
        """Run the row's program until its next decision; returns the tokens it injected."""
        injected: list[int] = []
        try:
            step = row.program.send(send)
            while isinstance(step, Inject):
                injected.extend(step.ids)
                step = row.program.send(None)
            row.pending = step
        except StopIteration as stop:
            row.done = True
            row.pending = None
            row.calls = stop.value
        except Exception as err:  # a program that cannot continue fails its own job, not the batch
            row.done = True
            row.pending = None
            row.error = f"{type(err).__name__}: {err}"
        row.stats.injected += len(injected)
        return injected

    # -- one batch -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self, jobs: list[DecodeJob]) -> list[DecodeResult]:
        if not jobs:
            return []
        prefix = self._shared_prefix()
        prefix_len = len(self.prefix_ids)
        rows = [_Row(i, job.program, next_position=prefix_len) for i, job in enumerate(jobs)]
        chunks: list[list[int]] = []
        for row, job in zip(rows, jobs, strict=True):
            injected = self._advance(row, None)
            row.stats.prompt_tokens = len(job.prompt_ids)
            chunks.append(list(job.prompt_ids) + injected)

        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(len(rows))
        attention = torch.ones(len(rows), prefix_len, dtype=torch.long, device=self.device)

        start = time.perf_counter()
        hidden, attention = self._forward(rows, chunks, cache, attention, jobs)
        prefill_ms = (time.perf_counter() - start) * 1000
        for row in rows:
            row.stats.prefill_ms = prefill_ms

        decode_start = time.perf_counter()
        live = list(rows)
        while True:
            keep: list[int] = []
            next_chunks: list[list[int]] = []
            deciding = [slot for slot, row in enumerate(live) if not row.done]
            steps = [live[slot].pending for slot in deciding]
            assert all(step is not None for step in steps)
            picked = self.sampler.pick(hidden[deciding], steps) if deciding else []  # type: ignore[arg-type]
            for slot, token in zip(deciding, picked, strict=True):
                row = live[slot]
                row.stats.generated += 1
                injected = self._advance(row, token)
                if row.done:
                    # The final decision needs no further pass: nothing reads its logits.
                    row.stats.decode_ms = (time.perf_counter() - decode_start) * 1000
                    continue
                keep.append(slot)
                next_chunks.append([token] + injected)
            if not keep:
                break
            if len(keep) < len(live):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                attention = attention[index]
                live = [live[i] for i in keep]
            hidden, attention = self._forward(live, next_chunks, cache, attention, None)
        for row in rows:
            if row.done and row.stats.decode_ms == 0.0:
                row.stats.decode_ms = (time.perf_counter() - decode_start) * 1000
        return [DecodeResult(calls=row.calls, stats=row.stats, error=row.error) for row in rows]

    def _forward(
        self,
        rows: list[_Row],
        chunks: list[list[int]],
        cache: DynamicCache,
        attention: torch.Tensor,
        prefill_jobs: list[DecodeJob] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append one right-padded chunk per row; returns each row's last-position hidden state
        (after the final norm; the sampler applies the LM head, only where a step needs it)."""
        width = max(len(c) for c in chunks)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        chunk_mask = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (row, chunk) in enumerate(zip(rows, chunks, strict=True)):
            n = len(chunk)
            ids[r, :n] = torch.tensor(chunk, dtype=torch.long)
            chunk_mask[r, :n] = 1
            # Pads get the positions after the row's last token; they are never attended.
            positions[r] = torch.arange(row.next_position, row.next_position + width)
            row.next_position += n
            row.stats.fed_tokens += n
            row.stats.forward_passes += 1
        ids, chunk_mask, positions = ids.to(self.device), chunk_mask.to(self.device), positions.to(self.device)
        soft_slots = ids == self.soft_id
        embeds = self.embed(ids.masked_fill(soft_slots, self.pad_id))
        if prefill_jobs is not None and bool(soft_slots.any()):
            for r, row in enumerate(rows):
                slots = soft_slots[r].nonzero(as_tuple=True)[0]
                if slots.numel():
                    soft = prefill_jobs[row.job_index].soft_embeddings
                    if soft is None or soft.shape[0] != slots.numel():
                        raise ValueError("soft-token slots and projected soft tokens disagree in number")
                    embeds[r, slots] = soft.to(embeds.dtype)
        attention = torch.cat([attention, chunk_mask], dim=1)
        out = self.base(
            inputs_embeds=embeds, attention_mask=attention, position_ids=positions, cache=cache, use_cache=True
        )
        self.forward_passes += 1
        last = chunk_mask.sum(dim=1) - 1
        hidden = out.last_hidden_state[torch.arange(len(rows), device=self.device), last]
        return hidden, attention
