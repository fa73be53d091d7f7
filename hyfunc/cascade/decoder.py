"""The LMS decoder: template-machine programs run over one batched KV cache, vLLM-style in
three roles —

- the scheduler (``scheduler.py``): rows, admission of waiting jobs as rows finish
  (continuous batching), prefix-cache lookups, per-job and per-call token budgets;
- the runner (``runner.py``): the model forward over the batch's KV cache (transformers);
- the sampler (``sampler.py``): one batched mask and argmax per step.

Per step every running row appends exactly one chunk on top of its cache: a newly admitted row
its prompt (less what the prefix cache already holds) and the machine's first injection, any
other row the token it just generated followed by whatever the machine injects before its
next decision. So a mode switch (generate -> inject -> generate) never re-prefills anything,
and each decision costs one pass; the last decision and anything injected after it are never
fed. The system-prompt prefix is run once per process and its KV reused by every row.

``decode(jobs)`` runs a static batch (every job admitted at once, as before continuous
batching); ``continuous(max_rows)`` gives a session the caller keeps feeding (``submit`` /
``step``) and ``stream(jobs, max_rows)`` drives one over an iterable, pulling a job (and so
building its program) only when a row is free.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from hyfunc.cascade import runner as runner_module
from hyfunc.cascade.attention import use_cpu_attention
from hyfunc.cascade.backend import decode_static
from hyfunc.cascade.prefix_cache import KV, PrefixCache, kv_cat
from hyfunc.cascade.prompts import SOFT_TOKEN, lms_shared_prefix
from hyfunc.cascade.runner import TransformersRunner
from hyfunc.cascade.sampler import BatchSampler
from hyfunc.cascade.scheduler import Budgets, DecodeJob, DecodeResult, Row, RowStats, Scheduler
from hyfunc.cascade.template import CALL_OPEN, TemplateMachine
from hyfunc.cascade.widths import WidthPolicy

__all__ = ["Budgets", "ContinuousDecoder", "DecodeJob", "DecodeResult", "LMSDecoder", "RowStats"]


class LMSDecoder:
    """Holds what outlives a batch: the model, the shared-prefix KV, the prefix cache, counters."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        machine: TemplateMachine,
        device: torch.device,
        *,
        prefix_cache_bytes: int = 0,
        budgets: Budgets | None = None,
        split_chunks: bool = True,
        pass_overhead_tokens: float | None = None,
    ):
        self.model = model
        if device.type == "cpu":
            use_cpu_attention(model)  # decode passes: matmul attention, not SDPA's slow small-query path
        self.tokenizer = tokenizer
        self.machine = machine
        self.device = device
        self.soft_id = tokenizer.convert_tokens_to_ids(SOFT_TOKEN)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.lm_head = model.get_output_embeddings()
        self.vocab_size = int(self.lm_head.weight.shape[0])
        self.sampler = BatchSampler(self.lm_head, self.vocab_size)
        self.cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.budgets = budgets or Budgets()
        # Narrower decode passes (widths.py): calibrated from pass timings only where a pass's
        # time is its cost (a CPU; CUDA calls return before the work is done), or a fixed overhead.
        self.widths: WidthPolicy | None = None
        if split_chunks and (pass_overhead_tokens is not None or device.type == "cpu"):
            self.widths = WidthPolicy(pass_overhead_tokens)
        self.call_open_id = machine.encode(CALL_OPEN)[0]
        self.prefix_ids = tokenizer.encode(lms_shared_prefix(tokenizer), add_special_tokens=False)
        self._prefix_kv: KV | None = None
        self.prefix_passes = 0  # shared-prefix prefills (once per process)
        self.forward_passes = 0  # all batched passes after the prefix
        self.steps = 0  # scheduler steps: each row makes one decision per step it is in

    def runner(self) -> TransformersRunner:
        return TransformersRunner(self.model, self.pad_id, self.soft_id, self.device)

    def shared_prefix(self) -> KV:
        if self._prefix_kv is None:
            self._prefix_kv = self.runner().encode_prefix(self.prefix_ids)
            self.prefix_passes += 1
        return self._prefix_kv

    def continuous(
        self, max_rows: int | None = None, source: Iterable[DecodeJob] | None = None, refill: bool = True
    ) -> ContinuousDecoder:
        return ContinuousDecoder(self, max_rows, source, refill)

    @torch.inference_mode()
    def decode(self, jobs: list[DecodeJob]) -> list[DecodeResult]:
        """A static batch: every job admitted in the first step (unless it waits one step for a
        prefix another job is computing); results in job order."""
        return decode_static(self, jobs)

    @torch.inference_mode()
    def stream(
        self, jobs: Iterable[DecodeJob], max_rows: int, refill: bool = True
    ) -> Iterator[tuple[int, DecodeResult]]:
        """Continuous batching over an iterable: (job index, result) as each job finishes. A job
        is pulled (its program built) only when a row is free for it. ``refill=False`` runs static
        batches of ``max_rows`` instead (the baseline continuous batching is measured against)."""
        session = self.continuous(max_rows=max_rows, source=jobs, refill=refill)
        while session.has_work():
            yield from session.step()


class ContinuousDecoder:
    """One running batch that jobs join as rows free up. Not thread-safe; one per caller."""

    def __init__(
        self, decoder: LMSDecoder, max_rows: int | None, source: Iterable[DecodeJob] | None = None, refill: bool = True
    ):
        self.decoder = decoder
        self.runner = decoder.runner()
        self.widths = decoder.widths
        self.scheduler = Scheduler(
            decoder.budgets, decoder.cache, decoder.soft_id, decoder.call_open_id, max_rows, refill=refill
        )
        self.source = iter(source) if source is not None else None
        self._pulled = 0
        self.steps = 0  # this session's steps (each: a decode pass, a prefill pass, or both)
        self._since: dict[Any, float] = {}  # waiting job -> when it started waiting
        self._start = time.perf_counter()

    def submit(self, key: Any, job: DecodeJob) -> None:
        self.scheduler.submit(key, job)
        self._since[key] = time.perf_counter()

    def has_work(self) -> bool:
        # A source not yet exhausted may hold more jobs; step() pulls them (inside its timing).
        return self.scheduler.has_work() or self.source is not None

    @property
    def feeding(self) -> list[tuple[Row, TransformersRunner]]:
        """Admitted rows whose prompt is longer than one slice, oldest first, each with a runner of
        its own: fed PREFILL_SLICE_TOKENS tokens per step in all, apart from the running batch,
        which they join (their KV merged in) when their whole prompt is fed."""
        return self.scheduler.feeding

    def job_keys(self) -> list[Any]:
        """The keys of the jobs waiting or running in this session."""
        return ([key for key, _, _ in self.scheduler.waiting] + [row.key for row, _ in self.feeding]
                + [row.key for row in self.scheduler.running])

    def cancel(self, keys: set[Any]) -> int:
        """Drop these jobs (waiting or running) between steps; returns how many were dropped."""
        sched = self.scheduler
        before = len(sched.waiting) + len(sched.running) + len(self.feeding)
        sched.waiting = type(sched.waiting)(w for w in sched.waiting if w[0] not in keys)
        for row, _ in self.feeding:
            if row.key in keys:
                row.job.program.close()
        sched.feeding = [(row, r) for row, r in sched.feeding if row.key not in keys]
        keep = [i for i, row in enumerate(sched.running) if row.key not in keys]
        for row in sched.running:
            if row.key in keys:
                row.job.program.close()
        if len(keep) < len(sched.running):
            sched.running = [sched.running[i] for i in keep]
            self.runner.keep_rows(keep)
        for key in keys:
            self._since.pop(key, None)
        return before - len(sched.waiting) - len(sched.running) - len(self.feeding)

    def _pull(self, n: int) -> int:
        """Move up to n jobs from the source into the waiting queue (building their programs)."""
        got = 0
        while self.source is not None and got < n:
            try:
                job = next(self.source)
            except StopIteration:
                self.source = None
                break
            self.scheduler.submit(self._pulled, job)
            self._since[self._pulled] = self._start  # it was handed in with the whole stream
            self._pulled += 1
            got += 1
        return got

    @torch.inference_mode()
    def step(self) -> list[tuple[Any, DecodeResult]]:
        """Admit what fits, run the step's passes, pick one token per row; returns the jobs that
        finished (possibly none)."""
        sched, runner, decoder = self.scheduler, self.runner, self.decoder
        t0 = time.perf_counter()
        if self.source is not None:
            self._pull(max(0, sched.free_rows() - len(sched.waiting)) if sched.max_rows is not None else 1 << 30)
        admitted, early = sched.admit()
        slice_tokens = runner_module.PREFILL_SLICE_TOKENS
        long = [row for row in admitted if len(row.chunk) > slice_tokens]
        if long:
            # A prompt longer than one slice is fed apart (below), never in a pass with other rows.
            admitted = [row for row in admitted if len(row.chunk) <= slice_tokens]
            sched.running[len(sched.running) - len(long) - len(admitted) :] = admitted
        groups = [len(admitted)] if admitted else []
        if len(admitted) > 1 and self.widths is not None:
            # Prefill in length groups (widths.py): the admitted rows reordered group by group,
            # in the scheduler too, so rows and runner rows stay in the same order.
            parts = self.widths.groups([len(row.chunk) for row in admitted])
            admitted = [admitted[i] for part in parts for i in part]
            sched.running[len(sched.running) - len(admitted) :] = admitted
            groups = [len(part) for part in parts]
        prefix = decoder.shared_prefix() if admitted or long else []
        start_kvs = [kv_cat([prefix, row.match.kv]) if row.match and row.match.kv else prefix for row in admitted]
        for row in long:
            feeder = decoder.runner()
            feeder.add_rows([kv_cat([prefix, row.match.kv]) if row.match and row.match.kv else prefix])
            self.feeding.append((row, feeder))
        for row in [*admitted, *long]:
            row.match = None  # its KV now lives in start_kvs; do not pin cache tensors for the row's life
        t1 = time.perf_counter()
        for row in [*admitted, *long, *early]:
            row.stats.wait_ms = (t0 - self._since.pop(row.key)) * 1000
            row.stats.first_pass = self.steps
        finished: list[Row] = list(early)
        for row in early:
            row.stats.program_ms += (t1 - t0) * 1000
        if not sched.running and not self.feeding:
            return [(row.key, row.result()) for row in finished]

        # Running rows decode (one narrow pass), then admitted rows prefill (a pass of their own),
        # then long prompts are fed (passes of their own, PREFILL_SLICE_TOKENS tokens in all).
        # A decode pass may be narrower than a row's chunk (see widths.py): the row feeds the
        # chunk's head, carries the rest, and makes no decision this step. A prompt longer than
        # PREFILL_SLICE_TOKENS is never in a pass with other rows (each would be padded to its
        # slice) and the step feeds at most that many prompt tokens of them all, oldest first
        # (vLLM's chunked prefill with a token budget per step): however many pathological
        # schemas arrive, a step costs one decode pass + one prefill pass + one slice, and the
        # running rows go on deciding, one token per step, while the long prompts are fed.
        present = list(sched.running)
        running = present[: len(present) - len(admitted)]
        hidden = []
        if running:
            lengths = [len(row.chunk) for row in running]
            width = self.widths.width(lengths) if self.widths is not None else max(lengths)
            pieces = [row.chunk[: min(width, slice_tokens)] for row in running]
            tp = time.perf_counter()
            hidden.append(runner.forward(pieces, [self._soft_part(row, piece) for row, piece in zip(running, pieces,
                                                                                                     strict=True)]))
            if self.widths is not None:
                self.widths.observe(len(running) * max(len(piece) for piece in pieces), time.perf_counter() - tp)
            for row, piece in zip(running, pieces, strict=True):
                row.stats.fed_tokens += len(piece)
                row.chunk = row.chunk[len(piece) :]
                if row.chunk:
                    row.stats.carry_passes += 1
            decoder.forward_passes += 1
        if admitted:
            heads = [row.chunk[:slice_tokens] for row in admitted]
            soft = [self._soft_part(row, head) for row, head in zip(admitted, heads, strict=True)]
            hidden.append(runner.prefill(start_kvs, heads, soft, groups))
            decoder.forward_passes += len(groups)
            for row, head in zip(admitted, heads, strict=True):
                row.stats.fed_tokens += len(head)
                row.chunk = row.chunk[len(head) :]
                if row.chunk:
                    row.stats.carry_passes += 1
        fed = self._feed_long(slice_tokens, t0, t1)
        for row, state in fed:
            sched.running.append(row)
            present.append(row)
            hidden.append(state)
        self.steps += 1
        decoder.steps += 1
        t2 = time.perf_counter()
        if not present:
            return [(row.key, row.result()) for row in finished]
        fresh = [row.fresh for row in present]
        for r, row in enumerate(present):
            row.stats.forward_passes += 1
            if row.fresh:
                self._remember_prompt(r, row)
        states = torch.cat(hidden) if len(hidden) > 1 else hidden[0]
        ready = [r for r, row in enumerate(present) if not row.chunk]
        tokens: list[int | None] = [None] * len(present)
        errors: dict[int, str] = {}
        if ready:
            picked, failed = self._pick(states[ready] if len(ready) < len(present) else states, [present[r] for r in ready])
            for j, r in enumerate(ready):
                tokens[r] = picked[j]
                if j in failed:
                    errors[r] = failed[j]
        keep, done = sched.update(tokens, errors)
        runner.keep_rows(keep)
        finished.extend(done)
        t3 = time.perf_counter()
        for row, was_fresh in zip(present, fresh, strict=True):
            row.stats.program_ms += (t1 - t0) * 1000
            if was_fresh:
                row.stats.prefill_ms += (t2 - t1) * 1000
            else:
                row.stats.decode_ms += (t2 - t1) * 1000
            row.stats.sample_ms += (t3 - t2) * 1000
        return [(row.key, row.result()) for row in finished]

    def _feed_long(self, budget: int, t0: float, t1: float) -> list[tuple[Row, torch.Tensor]]:
        """Feed the long prompts, oldest first, ``budget`` tokens in all; the rows whose prompt is
        now whole join the running batch (their KV after its rows). Returns those rows with their
        last-position hidden states, in the order they joined."""
        joined: list[tuple[Row, torch.Tensor]] = []
        while self.feeding and budget > 0:
            row, feeder = self.feeding[0]
            piece = row.chunk[:budget]
            tp = time.perf_counter()
            state = feeder.forward([piece], [self._soft_part(row, piece)])
            self.decoder.forward_passes += 1
            budget -= len(piece)
            row.stats.fed_tokens += len(piece)
            row.chunk = row.chunk[len(piece) :]
            if row.chunk:  # a slice with no decision; the step's other stages are not this row's
                row.stats.forward_passes += 1
                row.stats.carry_passes += 1
                row.stats.program_ms += (t1 - t0) * 1000
                row.stats.prefill_ms += (time.perf_counter() - tp) * 1000
                continue
            self.feeding.pop(0)
            self.runner.join(feeder)
            joined.append((row, state))
        return joined

    def _soft_part(self, row: Row, piece: list[int]) -> torch.Tensor | None:
        """The row's projected soft tokens for the slots in ``piece`` (the next ones in order)."""
        slots = piece.count(self.decoder.soft_id)
        if not slots or row.job.soft_embeddings is None:
            return None
        part = row.job.soft_embeddings[row.soft_fed : row.soft_fed + slots]
        row.soft_fed += slots
        return part

    def _remember_prompt(self, r: int, row: Row) -> None:
        """Put the row's cacheable prompt KV (just computed, or partly reused) into the prefix cache."""
        cache = self.decoder.cache
        if cache is None or row.cacheable <= row.stats.prompt_reused:
            return
        if row.stats.fed_tokens < row.cacheable - row.stats.prompt_reused:
            return  # a long prompt still being fed: its KV does not cover the cacheable part yet
        start = len(self.decoder.prefix_ids)
        kv = self.runner.row_kv(r, start, start + row.cacheable)
        cache.insert(row.job.prompt_ids[: row.cacheable], kv)

    def _pick(self, hidden: torch.Tensor, rows: list[Row]) -> tuple[list[int], dict[int, str]]:
        """One batched pick for ``rows`` (``hidden``: theirs, in order); if it fails (a step no token
        can satisfy), the rows are picked one by one so that only the offending row fails (its
        error keyed by its index in ``rows``)."""
        steps = [row.pending for row in rows]
        try:
            return self.decoder.sampler.pick(hidden, steps), {}
        except Exception:  # noqa: BLE001 - isolate the failing row below
            pass
        tokens: list[int] = []
        errors: dict[int, str] = {}
        for r, step in enumerate(steps):
            try:
                tokens.extend(self.decoder.sampler.pick(hidden[r : r + 1], [step]))
            except Exception as err:  # noqa: BLE001 - this row's step is unsatisfiable
                errors[r] = f"{type(err).__name__}: {err}"
                tokens.append(-1)
        return tokens, errors
