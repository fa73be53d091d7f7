"""The cascade feeder: batches from several callers decode in one running session, each caller
gets exactly what ``Cascade.run`` would give it, and a caller's deadline or a failed pass fails
only what it must."""

from __future__ import annotations

import threading
import time

import pytest
from engine_support import ALL_TOOLS, EMAIL, PING, WEATHER, request
from test_cascade import REQUESTS, comparable

from hyfunc.cascade import Cascade
from hyfunc.cascade.feeder import CascadeFeeder

OTHERS = [
    request("ping the server now", [PING], "o0"),
    request("email alice@example.com about the budget review on friday", [EMAIL, PING], "o1"),
    request("weather in Oslo", [WEATHER], "o2"),
    request("Convert 99 euros to yen and email the result to bob@example.com", ALL_TOOLS, "o3"),
]


@pytest.fixture(params=["callers", "thread"])
def feeder(request, tiny_config):
    """Both drivers: callers take turns running the session, or one model thread (which also
    loads the models) runs it for everyone."""
    tiny_config.cascade.batch_size = 4  # fewer rows than jobs: rows are refilled across callers
    feeder = CascadeFeeder.start(lambda: Cascade.load(tiny_config), driver=request.param)
    yield feeder
    feeder.close()


def test_the_thread_driver_runs_all_model_work_in_its_thread(tiny_config, monkeypatch):
    from hyfunc.cascade.decoder import ContinuousDecoder

    seen: set[str] = set()
    original = ContinuousDecoder.step

    def step(self):
        seen.add(threading.current_thread().name)
        return original(self)

    monkeypatch.setattr(ContinuousDecoder, "step", step)
    loaded_in: list[str] = []

    def load():
        loaded_in.append(threading.current_thread().name)
        return Cascade.load(tiny_config)

    feeder = CascadeFeeder.start(load, driver="thread")
    try:
        assert len(feeder.run(OTHERS)) == len(OTHERS)
    finally:
        feeder.close()
    assert loaded_in == ["hyfunc-model"] and seen == {"hyfunc-model"}
    with pytest.raises(RuntimeError, match="closed"):
        feeder.run(OTHERS)


def test_a_failing_load_is_raised_by_start(tmp_path):
    def load():
        raise FileNotFoundError("no models in /nowhere")

    with pytest.raises(FileNotFoundError, match="nowhere"):
        CascadeFeeder.start(load, driver="thread")
    with pytest.raises(ValueError, match="driver"):
        CascadeFeeder(None, driver="gpu")


def test_one_caller_gets_what_run_gives(feeder, tiny_config):
    alone = Cascade.load(tiny_config)
    expected = [comparable(r) for r in alone.run(REQUESTS)]
    assert [comparable(r) for r in feeder.run(REQUESTS)] == expected
    assert feeder.run([]) == []


def test_concurrent_callers_share_the_session(feeder, tiny_config):
    alone = Cascade.load(tiny_config)
    batches = [REQUESTS[:3], OTHERS, REQUESTS[3:]]
    expected = [[comparable(r) for r in alone.run(b)] for b in batches]
    got: list = [None] * len(batches)

    def call(i: int) -> None:
        got[i] = [comparable(r) for r in feeder.run(batches[i])]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == expected
    assert feeder.sessions == 1 and feeder.batches == 3
    assert feeder.max_live_batches >= 2  # jobs of different callers decoded side by side


def test_a_deadline_cancels_the_callers_jobs_only(feeder, tiny_config):
    from worker.deadline import DeadlineExceeded, deadline

    alone = Cascade.load(tiny_config)
    with pytest.raises(DeadlineExceeded), deadline(0.001):
        feeder.run(REQUESTS * 3)
    # The cancelled jobs leave the session; the next caller is served in full.
    assert [comparable(r) for r in feeder.run(OTHERS)] == [comparable(r) for r in alone.run(OTHERS)]
    assert feeder._session is None or feeder._session.job_keys() == []


def test_a_failed_pass_fails_the_live_batches_and_the_next_session_works(feeder, tiny_config, monkeypatch):
    from hyfunc.cascade.decoder import ContinuousDecoder

    original = ContinuousDecoder.step
    calls = {"n": 0}

    def failing(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return original(self)

    monkeypatch.setattr(ContinuousDecoder, "step", failing)
    with pytest.raises(RuntimeError, match="device lost"):
        feeder.run(REQUESTS)
    alone = Cascade.load(tiny_config)
    assert [comparable(r) for r in feeder.run(OTHERS)] == [comparable(r) for r in alone.run(OTHERS)]
    assert feeder.sessions == 2


def test_a_batch_that_cannot_be_prepared_fails_alone(feeder, monkeypatch):
    original = feeder.cascade.prepare

    def prepare(requests):
        if any(r.id == "boom" for r in requests):
            raise ValueError("bad batch")
        return original(requests)

    monkeypatch.setattr(feeder.cascade, "prepare", prepare)
    with pytest.raises(ValueError, match="bad batch"):
        feeder.run([request("ping", [PING], "boom")])
    assert len(feeder.run(OTHERS)) == len(OTHERS)


def test_a_driver_interrupted_mid_step_restarts_the_others(tiny_config, monkeypatch):
    """The deadline lands inside a decoder step of the driving caller: the session is dropped and a
    concurrent caller's unfinished jobs start again in a fresh session, with the same results."""
    from hyfunc.cascade.decoder import ContinuousDecoder
    from worker.deadline import DeadlineExceeded

    original = ContinuousDecoder.step
    state = {"n": 0}

    def interrupted(self):
        state["n"] += 1
        if state["n"] == 3:
            raise DeadlineExceeded(0.0)
        return original(self)

    alone = Cascade.load(tiny_config)
    expected = [comparable(r) for r in alone.run(OTHERS)]
    tiny_config.cascade.batch_size = 4
    feeder = CascadeFeeder(Cascade.load(tiny_config))  # driver="callers": the callers run the steps
    monkeypatch.setattr(ContinuousDecoder, "step", interrupted)
    got: dict = {}

    def other() -> None:
        got["others"] = [comparable(r) for r in feeder.run(OTHERS)]

    # Only this thread may drive until the interruption, so it is the one interrupted, with both
    # batches in the session; afterwards the other caller drives its own jobs to the end.
    real = feeder._drive

    class MainDrivesFirst:
        def acquire(self, timeout: float = -1) -> bool:
            if threading.current_thread() is not threading.main_thread() and state["n"] < 3:
                time.sleep(timeout)
                return False
            return real.acquire(timeout=timeout)

        def release(self) -> None:
            real.release()

    monkeypatch.setattr(feeder, "_drive", MainDrivesFirst())
    thread = threading.Thread(target=other)
    thread.start()
    while len(feeder._incoming) < 1:
        time.sleep(0.001)
    with pytest.raises(DeadlineExceeded):
        feeder.run(REQUESTS)
    thread.join(60)
    assert got["others"] == expected
    assert feeder.sessions == 2 and feeder.max_live_batches == 2


def test_the_model_thread_survives_a_failing_round(tiny_config, monkeypatch):
    """Anything that escapes a round (here: cancelling rows) fails the batches in the session, never
    the model thread: the next caller is served."""
    feeder = CascadeFeeder.start(lambda: Cascade.load(tiny_config), driver="thread")
    try:
        original = feeder._round
        state = {"n": 0}

        def round_once_failing():
            state["n"] += 1
            if state["n"] == 3:
                raise RuntimeError("bookkeeping broke")
            return original()

        monkeypatch.setattr(feeder, "_round", round_once_failing)
        with pytest.raises(RuntimeError, match="bookkeeping broke"):
            feeder.run(REQUESTS)
        assert feeder._thread is not None and feeder._thread.is_alive()
        assert len(feeder.run(OTHERS)) == len(OTHERS)
    finally:
        feeder.close()
