"""Results as jobs finish (issue 17, part 2), on the tiny models: the feeder hands each job's
result on as its row finishes, and a job past its deadline fails alone while the rest of its
batch — and the next batch — go on."""

from __future__ import annotations

import threading
import time

import pytest
from engine_support import PING, WEATHER, request

from hyfunc.cascade import Cascade
from hyfunc.cascade.feeder import CascadeFeeder
from hyfunc.cascade.template import Generate

RUNAWAY = "@@runaway@@"


def runaway_program(tokens: list[int]):
    """A job that never ends by itself (what a budget-free pathological schema amounts to)."""
    while True:
        yield Generate(tokens)


@pytest.fixture(params=["callers", "thread"])
def feeder(request, tiny_config):
    tiny_config.cascade.batch_size = 4
    tiny_config.cascade.max_job_tokens = None  # only the deadline can stop the runaway
    tiny_config.cascade.max_call_tokens = None
    tiny_config.cascade.relevance_threshold = -1.0
    feeder = CascadeFeeder.start(lambda: Cascade.load(tiny_config), driver=request.param)
    machine = feeder.cascade.machine
    original = machine.program

    def program(candidates, gold=None, source=None, prior=None, allow_no_call=True):
        if source and RUNAWAY in source:
            return runaway_program([machine.vocab.digit_ids["1"], machine.vocab.digit_ids["2"]])
        return original(candidates, gold, source=source, prior=prior, allow_no_call=allow_no_call)

    machine.program = program
    yield feeder
    feeder.close()


NORMAL = [request("weather in Lyon", [WEATHER], "n0"), request("ping the server now", [PING], "n1"),
          request("weather in Oslo in celsius", [WEATHER], "n2")]


def test_results_are_handed_on_as_jobs_finish_and_a_late_job_fails_alone(feeder):
    batch = [request(f"weather in Paris {RUNAWAY}", [WEATHER], "slow"), *NORMAL]
    seen: list[tuple[float, int, str | None]] = []
    threads: set[str] = set()

    def on_results(pairs):
        threads.add(threading.current_thread().name)
        seen.extend((time.monotonic(), i, r.error) for i, r in pairs)

    deadline = 4.0
    t0 = time.monotonic()
    results = feeder.run(batch, on_results=on_results, job_seconds=deadline, deadline_message="too slow")
    elapsed = time.monotonic() - t0
    assert [r.id for r in results] == ["slow", "n0", "n1", "n2"]
    assert results[0].error == f"too slow ({deadline:g} s)" and not results[0].calls
    assert all(r.error is None for r in results[1:]), [r.error for r in results[1:]]
    # Every job handed on exactly once, in the caller's thread; the normal ones long before the
    # runaway's deadline, the runaway at it.
    assert sorted(i for _, i, _ in seen) == [0, 1, 2, 3]
    assert threads == {threading.current_thread().name}
    finished = {i: at - t0 for at, i, _ in seen}
    assert max(finished[i] for i in (1, 2, 3)) < deadline - 1, finished
    assert deadline <= finished[0] < deadline + 2 and elapsed < deadline + 2, (finished, elapsed)
    # The runaway's row was cancelled: the next batch runs at once and matches a fresh run.
    t1 = time.monotonic()
    again = feeder.run(NORMAL, job_seconds=deadline)
    assert time.monotonic() - t1 < deadline and [r.calls for r in again] == [r.calls for r in results[1:]]


def test_without_a_deadline_every_result_is_handed_on_once(feeder):
    got: list[int] = []
    results = feeder.run(NORMAL + [request("nothing relevant at all", [PING], "x")],
                         on_results=lambda pairs: got.extend(i for i, _ in pairs))
    assert sorted(got) == [0, 1, 2, 3] and len(results) == 4
