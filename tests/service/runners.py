"""Batch runners for the worker tests, loaded by the worker subprocess through
HYFUNC_WORKER_RUNNER=runners:fault_injecting_cascade (tests/service on PYTHONPATH).

It is the worker's real runner (worker.runner.default_runner: the cascade on the tiny models
behind the CascadeFeeder's model thread, or the bare Cascade with worker.continuous_feed off)
with three test hooks: a query containing
POISON_MARK makes the batch raise (the cascade itself shrugs off every malformed schema
we tried), HYFUNC_TEST_BATCH_DELAY slows each batch so a test can kill the worker
while a batch is in flight, and a query containing SLOW_MARK holds its batch for
HYFUNC_TEST_SLOW_SECONDS (a batch held by a slow job).
"""

from __future__ import annotations

import os
import time
from typing import Any

from hyfunc.config import HyFuncConfig
from hyfunc.schema import CallRequest, CallResult
from worker.runner import default_runner

POISON_MARK = "@@poison@@"
SLOW_MARK = "@@slow@@"


class FaultInjectingCascade:
    def __init__(self, config: HyFuncConfig):
        self.cascade = default_runner(config)
        self.delay = float(os.environ.get("HYFUNC_TEST_BATCH_DELAY", "0"))
        self.slow = float(os.environ.get("HYFUNC_TEST_SLOW_SECONDS", "0"))

    @property
    def model_versions(self) -> dict[str, str]:
        return self.cascade.model_versions

    @property
    def streams_results(self) -> bool:
        return bool(getattr(self.cascade, "streams_results", False))

    def run(self, requests: list[CallRequest], **streaming: Any) -> list[CallResult]:
        poisoned = [r.id for r in requests if POISON_MARK in r.query]
        if poisoned:
            raise RuntimeError(f"poison job in batch: {poisoned}")
        if self.delay:
            time.sleep(self.delay)
        if self.slow and any(SLOW_MARK in r.query for r in requests):
            time.sleep(self.slow)
        return self.cascade.run(requests, **streaming)


def fault_injecting_cascade(config: HyFuncConfig) -> FaultInjectingCascade:
    return FaultInjectingCascade(config)
