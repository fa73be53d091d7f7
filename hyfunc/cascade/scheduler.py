"""The decoder's scheduler: which jobs hold a row, what each row feeds next, and when it stops.

It knows jobs and their template-machine programs, never the model: per step it admits
waiting jobs into free rows (looking their prompt up in the prefix cache), hands the runner
one chunk per running row, and after the sampler has picked one token per row it runs each
program up to its next decision, enforces the per-job and per-call generated-token budgets,
and retires finished rows — whose slots the next step refills (continuous batching).

Cache-aware admission: when two jobs waiting for admission in the same step share a long
uncached prompt prefix (the same candidate schemas), the later one waits a single step, then
finds the first one's prefix in the cache and prefills only what differs. A job is deferred
at most once, so nothing starves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hyfunc.cascade.prefix_cache import PrefixCache, PrefixMatch
from hyfunc.cascade.template import Generate, Inject, Program
from hyfunc.config import DEFAULT_MAX_CALL_TOKENS, DEFAULT_MAX_JOB_TOKENS
from hyfunc.schema import Call, Tool

# A job waits one step for another's prefix when they share at least this many uncached tokens.
DEFER_SHARED_TOKENS = 16


@dataclass
class ProgramSpec:
    """What a job's program was built from (``TemplateMachine.program`` arguments): plain data, so a
    backend whose engine runs in another process (vLLM) can build the same program there."""

    candidates: list[Tool]
    source: str | None = None
    prior: list[float] | None = None
    allow_no_call: bool = True


@dataclass
class DecodeJob:
    prompt_ids: list[int]  # job-specific prompt (after the shared prefix), with soft-token slots
    soft_embeddings: torch.Tensor | None  # (num_soft, d_lms) for the slots, or None without slots
    program: Program
    spec: ProgramSpec | None = None  # needed by out-of-process backends (vLLM); ours runs ``program``


@dataclass
class RowStats:
    prompt_tokens: int = 0  # == prompt_reused + prompt_computed
    prompt_reused: int = 0  # prompt tokens whose KV came from the prefix cache
    prompt_computed: int = 0  # prompt tokens run through the LMS for this job
    injected: int = 0
    generated: int = 0
    fed_tokens: int = 0  # tokens actually run through the LMS for this row (shared prefix excluded)
    forward_passes: int = 0  # == generated + carry_passes
    carry_passes: int = 0  # passes that fed only part of the row's chunk (no decision; widths.py)
    first_pass: int = 0  # the session step that admitted the row (its passes are the steps from there on)
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    # Wall time per stage while the job was inside the decoder (see LMSDecoder): waiting for a
    # row, admission (program build, cache lookup, KV layout), forward passes, and sampling.
    wait_ms: float = 0.0
    program_ms: float = 0.0
    sample_ms: float = 0.0


@dataclass
class DecodeResult:
    calls: list[Call] = field(default_factory=list)
    stats: RowStats = field(default_factory=RowStats)
    error: str | None = None


@dataclass
class Budgets:
    """Generated-token budgets (None: unbounded). A job over either fails alone. The defaults are
    the serving config's (`cascade.max_job_tokens` / `max_call_tokens`), so a decoder built
    without a config behaves as a served one."""

    max_job_tokens: int | None = DEFAULT_MAX_JOB_TOKENS
    max_call_tokens: int | None = DEFAULT_MAX_CALL_TOKENS


@dataclass(eq=False)
class Row:
    key: Any
    job: DecodeJob
    cacheable: int  # leading prompt tokens the prefix cache may hold (before the first soft slot)
    pending: Generate | None = None
    done: bool = False
    calls: list[Call] = field(default_factory=list)
    error: str | None = None
    stats: RowStats = field(default_factory=RowStats)
    chunk: list[int] = field(default_factory=list)  # what the row appends in the next pass
    fresh: bool = True  # the next pass is the row's prefill
    match: PrefixMatch | None = None
    call_tokens: int = 0  # generated in the current call
    call_number: int = 0
    soft_fed: int = 0  # soft-token slots fed so far (a long prompt is fed over several passes)

    def result(self) -> DecodeResult:
        return DecodeResult(calls=self.calls, stats=self.stats, error=self.error)


class Scheduler:
    def __init__(
        self,
        budgets: Budgets | None = None,
        cache: PrefixCache | None = None,
        soft_id: int | None = None,
        call_open_id: int | None = None,
        max_rows: int | None = None,
        refill: bool = True,
    ):
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        # refill=False: static batches — nothing is admitted until every running row finished.
        self.refill = refill
        self.budgets = budgets or Budgets()
        self.cache = cache
        self.soft_id = soft_id
        self.call_open_id = call_open_id  # an injected run holding it starts a new call
        self.max_rows = max_rows
        self.waiting: deque[tuple[Any, DecodeJob, bool]] = deque()  # (key, job, deferred once)
        self.running: list[Row] = []
        # Rows admitted but not in ``running`` yet, oldest first, each with the runner feeding its
        # long prompt apart from the running batch (the decoder's). They hold a row each.
        self.feeding: list[tuple[Row, Any]] = []
        self.deferred = 0  # jobs that waited one step for another's prefix

    # -- admission ------------------------------------------------------------------------------

    def submit(self, key: Any, job: DecodeJob) -> None:
        self.waiting.append((key, job, False))

    def free_rows(self) -> int:
        if not self.refill and (self.running or self.feeding):
            return 0
        if self.max_rows is None:
            return len(self.waiting)
        return max(0, self.max_rows - len(self.running) - len(self.feeding))

    def _cacheable(self, prompt: Sequence[int]) -> int:
        """The KV after a soft-token slot depends on that job's soft token: only what precedes
        the first slot is shared. The last prompt token is always fed (its logits are needed)."""
        limit = len(prompt) - 1
        if self.soft_id is not None:
            for i, t in enumerate(prompt):
                if t == self.soft_id:
                    return min(i, limit)
        return max(0, limit)

    def admit(self) -> tuple[list[Row], list[Row]]:
        """Take waiting jobs into free rows. Returns (rows that need a pass — their ``match`` holds
        the cached prefix —, rows already finished without one: a program that failed or ended
        before its first decision)."""
        slots = self.free_rows()
        admitted: list[Row] = []
        finished: list[Row] = []
        deferred: list[tuple[Any, DecodeJob, bool]] = []
        new_prompts: list[Sequence[int]] = []
        while self.waiting and len(admitted) < slots:
            key, job, was_deferred = self.waiting.popleft()
            prompt = job.prompt_ids
            if not prompt:
                raise ValueError("a job's prompt must hold at least one token")
            row = Row(key, job, self._cacheable(prompt))
            head = prompt[: row.cacheable]
            if self.cache is not None and not was_deferred and new_prompts:
                cached = self.cache.matched_length(head)
                shared = max(_common_prefix(head, other) for other in new_prompts)
                if shared - cached >= DEFER_SHARED_TOKENS:
                    deferred.append((key, job, True))
                    self.deferred += 1
                    continue
            row.stats.prompt_tokens = len(prompt)
            injected = self._advance(row, None)
            if row.done:
                finished.append(row)
                continue
            if self.cache is not None:
                row.match = self.cache.match(head)
            reused = row.match.length if row.match is not None else 0
            row.stats.prompt_reused = reused
            row.stats.prompt_computed = len(prompt) - reused
            row.chunk = list(prompt[reused:]) + injected
            new_prompts.append(head)
            admitted.append(row)
        self.waiting.extendleft(reversed(deferred))
        self.running.extend(admitted)
        return admitted, finished

    # -- after a pass ---------------------------------------------------------------------------

    def update(self, tokens: Sequence[int | None], errors: dict[int, str] | None = None) -> tuple[list[int], list[Row]]:
        """Feed each running row its picked token (``errors``: rows whose pick failed, by index —
        they fail alone; None: the row still has chunk tokens to feed and made no decision).
        Returns the indices of the rows still running (for the runner) and the rows that finished."""
        if len(tokens) != len(self.running):
            raise ValueError(f"{len(tokens)} tokens for {len(self.running)} running rows")
        keep: list[int] = []
        finished: list[Row] = []
        for i, (row, token) in enumerate(zip(self.running, tokens, strict=True)):
            row.fresh = False
            if errors and i in errors:
                self._fail(row, errors[i])
                finished.append(row)
                continue
            if token is None:
                keep.append(i)  # its chunk's rest goes in the next pass
                continue
            row.stats.generated += 1
            row.call_tokens += 1
            injected = self._advance(row, token)
            if not row.done:
                self._check_budgets(row)
            if row.done:
                # The final decision needs no further pass: nothing reads its logits.
                finished.append(row)
                continue
            row.chunk = [token] + injected
            keep.append(i)
        self.running = [self.running[i] for i in keep]
        return keep, finished

    def _check_budgets(self, row: Row) -> None:
        """A row about to make another decision past its budget fails now, alone."""
        job_cap, call_cap = self.budgets.max_job_tokens, self.budgets.max_call_tokens
        if job_cap is not None and row.stats.generated >= job_cap:
            self._fail(row, f"generated-token budget cascade.max_job_tokens={job_cap} exceeded")
        elif call_cap is not None and row.call_tokens >= call_cap:
            self._fail(
                row, f"generated-token budget cascade.max_call_tokens={call_cap} exceeded in call {row.call_number}"
            )

    @staticmethod
    def _fail(row: Row, error: str) -> None:
        row.done = True
        row.pending = None
        row.calls = []
        row.error = error
        row.job.program.close()

    def _advance(self, row: Row, send: int | None) -> list[int]:
        """Run the row's program until its next decision; returns the tokens it injected."""
        injected: list[int] = []
        try:
            step = row.job.program.send(send)
            while isinstance(step, Inject):
                if self.call_open_id is not None and self.call_open_id in step.ids:
                    row.call_number += 1
                    row.call_tokens = 0
                injected.extend(step.ids)
                step = row.job.program.send(None)
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

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.feeding)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n
