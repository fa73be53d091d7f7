"""What a worker runs a batch with: the cascade, loaded once per worker process.

Anything with `run(list[CallRequest]) -> list[CallResult]` and a `model_versions` dict
is a runner; `Cascade` is one, and `CascadeFeeder` (the default, `worker.continuous_feed`)
runs a cascade's batches through one continuously fed decoder session. HYFUNC_WORKER_RUNNER=module:factory swaps in another
(factory(config) -> runner), e.g. a remote model server client.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Protocol

from hyfunc.config import HyFuncConfig
from hyfunc.schema import CallRequest, CallResult


class BatchRunner(Protocol):
    model_versions: dict[str, str]

    def run(self, requests: list[CallRequest]) -> list[CallResult]: ...


def _import(spec: str) -> object:
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"runner {spec!r} must look like 'package.module:factory'")
    return getattr(importlib.import_module(module), attr)


def build_runner(config: HyFuncConfig) -> BatchRunner:
    spec = os.environ.get("HYFUNC_WORKER_RUNNER")
    if spec:
        factory = _import(spec)
        return factory(config)  # type: ignore[operator]
    return default_runner(config)


def default_runner(config: HyFuncConfig) -> BatchRunner:
    """The cascade on the configured models: behind a CascadeFeeder's model thread, or bare with
    worker.continuous_feed off."""
    from hyfunc.cascade import Cascade

    if config.worker.continuous_feed:
        from hyfunc.cascade.feeder import CascadeFeeder

        # One model thread loads the models and runs them: no other thread of the worker ever
        # issues a torch op (each would keep an OpenMP team spinning on the cores).
        return CascadeFeeder.start(lambda: Cascade.load(config), driver="thread")
    return Cascade.load(config)


_lock = threading.Lock()
_runner: BatchRunner | None = None


def get_runner(config: HyFuncConfig) -> BatchRunner:
    """The process's runner, built on first use (models are loaded once per process)."""
    global _runner
    with _lock:
        if _runner is None:
            _runner = build_runner(config)
        return _runner
