"""Continuous batching across callers: one decoder session that every caller's batch joins.

``Cascade.run`` decodes one batch from its first job to its last, so a worker's next batch waits
for this batch's longest job while most rows sit idle. With a ``CascadeFeeder`` each caller's
batch is prepared (LML, retrieval, projector) as it arrives and its jobs join one running decoder
session as rows free up; the caller gets its results when its own jobs are done. Callers are
threads — a worker's thread pool, one per message batch — so while one batch is being claimed or
written to the database, another's jobs are decoding.

Model work runs in one caller thread at a time (the *driver*, leader/follower): a caller whose
batch is not done takes the drive lock and steps the session, handling every caller's
arrivals, until its own batch is done; then the next waiting caller takes over. With one caller
(a solo pool) that is the very thread ``Cascade.run`` would run in. With several caller threads
(a thread pool) use ``driver="thread"``, made by ``CascadeFeeder.start(load, "thread")``: one
model thread loads the cascade and does all model work, because torch ops issued from several
threads each keep an OpenMP team busy-waiting on the cores (measured: a second thread's matmuls
at half speed while the first lives). The feeder is a runner
(``run(requests) -> results``, ``model_versions``), so the worker's batch mechanics — claims,
deadlines, job-by-job isolation — are unchanged:

- a caller interrupted while it waits (a batch deadline) has its jobs cancelled in the session;
- a driver interrupted inside a step leaves the session inconsistent: it is dropped, and the other
  callers' unfinished jobs start again in a fresh one;
- a model pass that raises fails every batch with jobs in the session (the worker then isolates
  them job by job) and the next batch starts a fresh session.

Results as jobs finish: ``run(requests, on_results=...)`` hands each job's result to
``on_results`` (in the caller's thread, so the worker writes it while the model thread goes on)
as soon as its row finishes, not when the caller's whole batch is done; with ``job_seconds`` a job
not finished that long after ``run`` was called fails alone (its row is cancelled) and the rest
of the batch goes on.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from hyfunc.cascade.decoder import ContinuousDecoder, DecodeResult
from hyfunc.schema import CallRequest, CallResult

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Batch:
    requests: list[CallRequest]
    number: int = -1
    done: threading.Event = field(default_factory=threading.Event)
    results: list[CallResult] | None = None
    error: BaseException | None = None
    prepared: Any = None
    decoded: dict[int, DecodeResult] = field(default_factory=dict)
    build_ms: dict[int, float] = field(default_factory=dict)
    cancelled: bool = False
    # (request index, result) of each job as it finishes, for the caller to hand on (on_results).
    ready: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class CascadeFeeder:
    def __init__(self, cascade, max_rows: int | None = None, poll_seconds: float = 0.01, driver: str = "callers"):
        if driver not in ("callers", "thread"):
            raise ValueError(f"driver must be 'callers' or 'thread', got {driver!r}")
        self.cascade = cascade
        self.max_rows = max_rows or (cascade.config.batch_size if cascade is not None else None)
        self.poll_seconds = poll_seconds  # how long a waiting caller waits for the drive lock at a time
        self.driver = driver
        self._lock = threading.Lock()  # guards _incoming and _cancelled
        self._wake = threading.Condition(self._lock)  # driver="thread": new work for the model thread
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._drive = threading.Lock()  # held by the caller running model work
        self._incoming: list[_Batch] = []
        self._cancelled: list[_Batch] = []
        self._expiring: list[tuple[_Batch, set[int], str]] = []  # jobs past their caller's deadline
        self._session: ContinuousDecoder | None = None
        self._live: dict[int, _Batch] = {}  # batches with jobs in the session (driver only)
        self._ids = itertools.count()
        self.batches = 0  # caller batches served
        self.sessions = 0  # decoder sessions started (a new one after a failed or interrupted pass)
        self.max_live_batches = 0  # most caller batches decoding in one session at once

    @classmethod
    def start(cls, load: Callable[[], Any], driver: str = "callers", **options: Any) -> CascadeFeeder:
        """A feeder around the cascade ``load()`` returns, loaded in the thread that will run the
        models: with ``driver="thread"`` that is the model thread, so no other thread of the
        process ever runs a torch op. (An OpenMP team stays hot in every live thread that used
        torch: measured here, a matmul loop in a second thread runs at half speed for as long as
        the first is alive — a Celery worker's main thread that loaded the models, say.)"""
        if driver != "thread":
            return cls(load(), driver=driver, **options)
        feeder = cls(None, driver="thread", **options)
        loaded = threading.Event()
        failure: list[BaseException] = []

        def model_thread() -> None:
            try:
                feeder.cascade = load()
                if feeder.max_rows is None:
                    feeder.max_rows = feeder.cascade.config.batch_size
            except BaseException as err:  # noqa: BLE001 - reported to the caller of start()
                failure.append(err)
                return
            finally:
                loaded.set()
            feeder._drive_forever()

        feeder._thread = threading.Thread(target=model_thread, name="hyfunc-model", daemon=True)
        feeder._thread.start()
        loaded.wait()
        if failure:
            raise failure[0]
        return feeder

    @property
    def model_versions(self) -> dict[str, str]:
        return self.cascade.model_versions

    # run() hands results on as jobs finish: a worker writes them while the batch goes on.
    streams_results = True

    def run(
        self,
        requests: list[CallRequest],
        on_results: Callable[[list[tuple[int, CallResult]]], None] | None = None,
        job_seconds: float | None = None,
        deadline_message: str = "deadline exceeded",
    ) -> list[CallResult]:
        """Results in request order. ``on_results`` gets (request index, result) pairs as jobs
        finish, in this thread; ``job_seconds``: a job not finished that long after this call
        fails alone with ``deadline_message`` (its row is cancelled, the others go on)."""
        if not requests:
            return []
        batch = _Batch(list(requests))
        until = time.monotonic() + job_seconds if job_seconds is not None else None
        delivered: dict[int, CallResult] = {}
        if self.driver == "thread":
            self._ensure_thread()
        with self._wake:
            self._incoming.append(batch)
            self._wake.notify()
        try:
            while not batch.done.is_set():
                self._deliver(batch, delivered, on_results)
                if until is not None and time.monotonic() >= until:
                    self._expire(batch, delivered, on_results, f"{deadline_message} ({job_seconds:g} s)")
                    return [delivered[i] for i in range(len(requests))]
                if self.driver == "thread":
                    batch.done.wait(self.poll_seconds)  # short waits: a finished job or a deadline is seen promptly
                elif self._drive.acquire(timeout=self.poll_seconds):
                    try:
                        self._drive_until(batch, until)
                    finally:
                        self._drive.release()
        except BaseException:
            batch.cancelled = True
            with self._wake:
                self._cancelled.append(batch)
                self._wake.notify()
            raise
        if batch.error is not None:
            raise batch.error
        assert batch.results is not None
        self._deliver(batch, delivered, on_results)
        missing = [(i, r) for i, r in enumerate(batch.results) if i not in delivered]
        if missing and on_results is not None:
            on_results(missing)
        return batch.results

    @staticmethod
    def _deliver(
        batch: _Batch, delivered: dict[int, CallResult], on_results: Callable[[list[tuple[int, CallResult]]], None] | None
    ) -> None:
        """Hand on the jobs that finished since the last call (one on_results call for them all)."""
        fresh: list[tuple[int, CallResult]] = []
        while True:
            try:
                index, result = batch.ready.get_nowait()
            except queue.Empty:
                break
            if index not in delivered:
                delivered[index] = result
                fresh.append((index, result))
        if fresh and on_results is not None:
            on_results(fresh)

    def _expire(
        self,
        batch: _Batch,
        delivered: dict[int, CallResult],
        on_results: Callable[[list[tuple[int, CallResult]]], None] | None,
        message: str,
    ) -> None:
        """The caller's deadline: its unfinished jobs fail now, with ``message``, and their rows are
        cancelled by the model thread (or the next driver) — the caller does not wait for that."""
        self._deliver(batch, delivered, on_results)
        late = {i for i in range(len(batch.requests)) if i not in delivered}
        failed = [(i, CallResult(id=batch.requests[i].id, error=message)) for i in sorted(late)]
        delivered.update(failed)
        with self._wake:
            self._expiring.append((batch, late, message))
            self._wake.notify()
        if failed and on_results is not None:
            on_results(failed)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the model thread (driver="thread"); with driver="callers" nothing runs between calls."""
        if self._thread is not None:
            with self._wake:
                self._stopping = True
                self._wake.notify()
            self._thread.join(timeout)

    def _ensure_thread(self) -> None:
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                if self._stopping:
                    raise RuntimeError("the cascade feeder was closed")
                self._thread = threading.Thread(target=self._drive_forever, name="hyfunc-model", daemon=True)
                self._thread.start()

    # -- driving (one thread at a time, holding _drive) --------------------------------------------

    def _drive_until(self, own: _Batch, until: float | None = None) -> None:
        """Rounds until the caller has something to hand on: its batch done, a finished job, or
        its deadline."""
        while not own.done.is_set() and own.ready.empty() and (until is None or time.monotonic() < until):
            if not self._round() and not own.done.is_set() and own.number not in self._live:
                break  # ours was taken back into the queue: run() tries again

    def _drive_forever(self) -> None:
        """The model thread (``driver="thread"``): rounds while there is work, asleep otherwise."""
        while True:
            with self._wake:
                while not (self._incoming or self._cancelled or self._expiring
                           or (self._session and self._session.has_work())):
                    if self._stopping:
                        return
                    self._wake.wait()
            try:
                self._round()
            except Exception as err:  # noqa: BLE001 - the model thread must outlive any one round
                self._fail_session(err, "feeder round failed")

    def _round(self) -> bool:
        """Arrivals and cancellations, then one decoder step; False when there was nothing to step."""
        with self._lock:
            incoming, self._incoming = self._incoming, []
            cancelled, self._cancelled = self._cancelled, []
            expiring, self._expiring = self._expiring, []
        for batch in cancelled:
            self._cancel(batch)
        for batch, late, message in expiring:
            self._cancel_jobs(batch, late, message)
        for i, batch in enumerate(incoming):
            try:
                self._admit(batch)
            except BaseException:  # interrupted (a deadline): the rest go back in the queue
                with self._lock:
                    self._incoming[:0] = [b for b in incoming[i:] if b.number not in self._live]
                raise
        session = self._session
        if session is None or not session.has_work():
            return False
        try:
            with torch.inference_mode():
                finished = session.step()
        except Exception as err:  # noqa: BLE001 - a failed pass fails every batch in the session
            self._fail_session(err, "decoder step failed")
            return True
        except BaseException:  # interrupted mid-step: the session cannot be trusted
            self._restart()
            raise
        for (number, index), result in finished:
            batch = self._live.get(number)
            if batch is None:
                continue  # cancelled meanwhile
            result.stats.program_ms += batch.build_ms.pop(index, 0.0)
            batch.decoded[index] = result
            self._ready(batch, index, result)
            if len(batch.decoded) == len(batch.prepared.selected):
                self._live.pop(number)
                self._complete(batch)
        return True

    def _ready(self, batch: _Batch, index: int, out: DecodeResult | None) -> None:
        """One job's result, assembled now that its row is done, for its caller to hand on."""
        try:
            result = self.cascade.assemble_one(batch.prepared, index, out)
        except Exception as err:  # noqa: BLE001 - this job's result failed to assemble: its error
            result = CallResult(id=batch.requests[index].id, error=f"{type(err).__name__}: {err}")
        batch.ready.put((index, result))

    def _cancel_jobs(self, batch: _Batch, late: set[int], message: str) -> None:
        """Drop a caller's late jobs from the session; they count as decoded (failed), so the
        batch completes when its other jobs do."""
        if batch.number < 0:  # not admitted yet: it never will be (its caller has its answer)
            batch.cancelled = True
            return
        if batch.number not in self._live:
            return
        if self._session is not None:
            self._session.cancel({(batch.number, i) for i in late})
        for index in late:
            if index in batch.prepared.selected and index not in batch.decoded:
                batch.decoded[index] = DecodeResult(error=message)
        if len(batch.decoded) == len(batch.prepared.selected):
            self._live.pop(batch.number)
            self._complete(batch)

    def _fail_session(self, err: Exception, what: str) -> None:
        """Fail every batch with jobs in the session and drop it: the next batch starts a fresh one."""
        log.exception("%s; failing %d batches", what, len(self._live))
        for batch in self._live.values():
            batch.fail(err)
        self._live.clear()
        self._session = None

    def _new_session(self) -> ContinuousDecoder:
        self._session = self.cascade.decoder.continuous(max_rows=self.max_rows)
        self.sessions += 1
        return self._session

    def _admit(self, batch: _Batch) -> None:
        """Prepare a caller's batch and put its jobs in the session's queue."""
        if batch.cancelled:
            return  # its caller gave up before it was admitted
        self.batches += 1
        try:
            with torch.inference_mode():
                batch.prepared = self.cascade.prepare(batch.requests)
        except Exception as err:  # noqa: BLE001 - this caller's batch fails, the session goes on
            batch.fail(err)
            return
        selected = set(batch.prepared.selected)
        for index in range(len(batch.requests)):
            if index not in selected:  # no call: its result is known now
                self._ready(batch, index, None)
        if not batch.prepared.selected:
            self._complete(batch)
            return
        batch.number = next(self._ids)
        self._live[batch.number] = batch
        self.max_live_batches = max(self.max_live_batches, len(self._live))
        self._submit(batch, self._session or self._new_session())

    def _submit(self, batch: _Batch, session: ContinuousDecoder) -> None:
        """Submit the batch's jobs not decoded yet (all of them, on admission)."""
        try:
            jobs = self.cascade.decode_jobs(batch.prepared)
            for index in batch.prepared.selected:
                t = time.perf_counter()
                job = next(jobs)
                if index in batch.decoded:
                    continue
                batch.build_ms[index] = (time.perf_counter() - t) * 1000
                session.submit((batch.number, index), job)
        except Exception as err:  # noqa: BLE001
            self._live.pop(batch.number, None)
            batch.fail(err)

    def _cancel(self, batch: _Batch) -> None:
        if self._live.pop(batch.number, None) is not None and self._session is not None:
            self._session.cancel({key for key in self._session.job_keys() if key[0] == batch.number})

    def _restart(self) -> None:
        """A fresh session with every live batch's unfinished jobs submitted again."""
        self._session = None
        session = self._new_session()
        for batch in list(self._live.values()):
            batch.build_ms.clear()
            self._submit(batch, session)

    def _complete(self, batch: _Batch) -> None:
        try:
            batch.results = self.cascade.assemble(batch.prepared, batch.decoded)
        except Exception as err:  # noqa: BLE001
            batch.fail(err)
            return
        batch.done.set()
