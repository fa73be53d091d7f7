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
"""

from __future__ import annotations

import itertools
import logging
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

    def run(self, requests: list[CallRequest]) -> list[CallResult]:
        if not requests:
            return []
        batch = _Batch(list(requests))
        if self.driver == "thread":
            self._ensure_thread()
        with self._wake:
            self._incoming.append(batch)
            self._wake.notify()
        try:
            while not batch.done.is_set():
                if self.driver == "thread":
                    batch.done.wait(self.poll_seconds)  # short waits: a deadline lands promptly
                elif self._drive.acquire(timeout=self.poll_seconds):
                    try:
                        self._drive_until(batch)
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
        return batch.results

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

    def _drive_until(self, own: _Batch) -> None:
        while not own.done.is_set():
            if not self._round() and not own.done.is_set() and own.number not in self._live:
                break  # ours was taken back into the queue: run() tries again

    def _drive_forever(self) -> None:
        """The model thread (``driver="thread"``): rounds while there is work, asleep otherwise."""
        while True:
            with self._wake:
                while not (self._incoming or self._cancelled or (self._session and self._session.has_work())):
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
        for batch in cancelled:
            self._cancel(batch)
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
            if len(batch.decoded) == len(batch.prepared.selected):
                self._live.pop(number)
                self._complete(batch)
        return True

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
