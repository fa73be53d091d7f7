"""The scheduler alone, with hand-written programs and no model: admission into free rows,
cache-aware deferral, budgets, and what each row feeds."""

from __future__ import annotations

from collections.abc import Generator

import pytest
import torch

from hyfunc.cascade.prefix_cache import PrefixCache
from hyfunc.cascade.scheduler import DEFER_SHARED_TOKENS, Budgets, DecodeJob, Scheduler
from hyfunc.cascade.template import Generate, Inject
from hyfunc.schema import Call

SOFT, OPEN = 999, 500


def program(decisions: int, calls: int = 1) -> Generator:
    """Opens ``calls`` calls (injecting OPEN), each making ``decisions`` choices between 1 and 2."""
    for _ in range(calls):
        yield Inject([OPEN, 7])
        for _step in range(decisions):
            token = yield Generate([1, 2])
            assert token in (1, 2)
    return [Call(name=f"f{c}", arguments={}) for c in range(calls)]


def job(prompt: list[int], decisions: int = 2, calls: int = 1) -> DecodeJob:
    return DecodeJob(prompt, None, program(decisions, calls))


def run(sched: Scheduler, pick: int = 1) -> tuple[list[tuple[int, list[int]]], dict]:
    """Drive to the end; returns per step the running keys and the finished rows by key."""
    log, done = [], {}
    while sched.has_work():
        _, early = sched.admit()
        done.update({r.key: r for r in early})
        if not sched.running:
            continue
        log.append(([r.key for r in sched.running], [len(r.chunk) for r in sched.running]))
        _, finished = sched.update([pick] * len(sched.running))
        done.update({r.key: r for r in finished})
    return log, done


def test_rows_are_refilled_as_jobs_finish() -> None:
    sched = Scheduler(max_rows=2, soft_id=SOFT, call_open_id=OPEN)
    for key, decisions in enumerate([1, 3, 1, 1]):
        sched.submit(key, job([10, 11, SOFT, 12], decisions))
    log, done = run(sched)
    assert [keys for keys, _ in log] == [[0, 1], [1, 2], [1, 3]]
    # A new row feeds its prompt plus the first injection; a running row its token plus nothing.
    assert log[0][1] == [4 + 2, 4 + 2] and log[1][1] == [1, 6]
    assert all(r.error is None and len(r.calls) == 1 for r in done.values())
    assert done[1].stats.generated == 3 and done[1].stats.prompt_computed == 4


def test_static_admission_takes_everything() -> None:
    sched = Scheduler(soft_id=SOFT)
    for key in range(5):
        sched.submit(key, job([key, SOFT, 3]))
    admitted, early = sched.admit()
    assert len(admitted) == 5 and not early and not sched.waiting


def test_deferral_waits_one_step_for_a_shared_prefix() -> None:
    cache = PrefixCache(1 << 20)
    sched = Scheduler(cache=cache, soft_id=SOFT)
    schemas = list(range(100, 100 + DEFER_SHARED_TOKENS + 4))
    sched.submit("a", job(schemas + [1, SOFT, 9]))
    sched.submit("b", job(schemas + [2, SOFT, 9]))  # same schemas, other query: waits
    sched.submit("c", job([5] * 40 + [SOFT, 9]))  # nothing in common: admitted
    admitted, _ = sched.admit()
    assert [r.key for r in admitted] == ["a", "c"] and sched.deferred == 1
    assert [key for key, _, _ in sched.waiting] == ["b"]
    # The runner would now compute "a" and the decoder store its prompt KV:
    head = schemas + [1]
    kv = [(torch.zeros(1, len(head), 2), torch.zeros(1, len(head), 2))]
    cache.insert(head, kv)
    sched.update([1, 1])
    admitted, _ = sched.admit()
    (b,) = admitted
    assert b.key == "b" and b.stats.prompt_reused == len(schemas)
    assert b.chunk[: 3] == [2, SOFT, 9] and b.stats.prompt_computed == 3


def test_a_job_is_deferred_at_most_once() -> None:
    cache = PrefixCache(1 << 20)
    sched = Scheduler(cache=cache, soft_id=SOFT)
    schemas = list(range(100, 100 + DEFER_SHARED_TOKENS))
    for key in range(3):
        sched.submit(key, job(schemas + [key, SOFT, 9]))
    first, _ = sched.admit()
    assert [r.key for r in first] == [0]
    sched.update([1])
    second, _ = sched.admit()  # nothing was cached (the decoder never inserted): admitted anyway
    assert [r.key for r in second] == [1, 2]


def test_job_budget_fails_only_that_row() -> None:
    sched = Scheduler(Budgets(max_job_tokens=3), soft_id=SOFT)
    sched.submit("long", job([1, SOFT, 2], decisions=10))
    sched.submit("short", job([1, SOFT, 2], decisions=3))
    _, done = run(sched)
    assert done["long"].error == "generated-token budget cascade.max_job_tokens=3 exceeded"
    assert done["long"].stats.generated == 3 and done["long"].calls == []
    assert done["short"].error is None and done["short"].stats.generated == 3  # exactly at the budget is fine


def test_call_budget_counts_each_call_afresh() -> None:
    sched = Scheduler(Budgets(max_call_tokens=2), soft_id=SOFT, call_open_id=OPEN)
    sched.submit("ok", job([1, SOFT, 2], decisions=2, calls=3))  # 6 tokens, 2 per call
    sched.submit("bad", job([1, SOFT, 2], decisions=3, calls=1))
    _, done = run(sched)
    assert done["ok"].error is None and len(done["ok"].calls) == 3
    assert done["bad"].error == "generated-token budget cascade.max_call_tokens=2 exceeded in call 1"


def test_failing_program_finishes_at_admission() -> None:
    def broken():
        yield from ()
        raise RuntimeError("cannot template")

    sched = Scheduler(soft_id=SOFT)
    sched.submit("x", DecodeJob([1, 2], None, broken()))
    admitted, early = sched.admit()
    assert not admitted and early[0].error == "RuntimeError: cannot template"


def test_pick_errors_fail_the_row() -> None:
    sched = Scheduler(soft_id=SOFT)
    sched.submit(0, job([1, SOFT, 2]))
    sched.submit(1, job([1, SOFT, 2]))
    sched.admit()
    keep, finished = sched.update([1, -1], errors={1: "RuntimeError: no allowed token"})
    assert keep == [0] and finished[0].key == 1 and finished[0].error == "RuntimeError: no allowed token"


def test_cacheable_stops_at_the_first_soft_slot() -> None:
    sched = Scheduler(soft_id=SOFT)
    assert sched._cacheable([1, 2, SOFT, 3]) == 2
    assert sched._cacheable([1, 2, 3]) == 2  # no slot: all but the last token (its logits are needed)
    with pytest.raises(ValueError, match="max_rows"):
        Scheduler(max_rows=0)
