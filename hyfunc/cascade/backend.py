"""The LMS backend seam: what the engine drives to decode templated jobs, and the factory that
picks one by config (``models.lms_backend``).

A backend takes ``DecodeJob``s (the job's prompt ids after the shared prefix, its projected
soft-token embeddings, its template-machine program and the ``ProgramSpec`` the program was
built from) and returns ``DecodeResult``s (calls, token counters, stage timings). Two
implementations:

- ``transformers``: our decoder (``decoder.LMSDecoder``: scheduler, runner, sampler over one
  batched KV cache, injected chunks appended in one pass);
- ``vllm``: ``hyfunc.backends.vllm_lms.VLLMLMSBackend`` — one vLLM request per job, the soft
  token as prompt embeddings, the program enforced inside vLLM's engine by a logits processor.

The engine, the feeder and the benches use only the surface below, so either backend serves.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from hyfunc.cascade.scheduler import Budgets, DecodeJob, DecodeResult

if TYPE_CHECKING:
    from hyfunc.cascade.template import TemplateMachine
    from hyfunc.config import CascadeConfig, ModelsConfig
    from hyfunc.models.bundle import ModelBundle

LMS_BACKENDS = ("transformers", "vllm")
# Backends outside hyfunc.cascade are named here, never imported: they build on the cascade (its
# scheduler, template machine, prompts), so an import from the cascade would be a circle. The
# engine loads one by name when a config asks for it (the layers: docs/architecture.md).
PLUGINS = {
    "lms:vllm": "hyfunc.backends.vllm_lms:VLLMLMSBackend",
    "intent:vllm": "hyfunc.backends.vllm_intent:VLLMIntentEncoder",
}


def load_plugin(key: str) -> Any:
    """The class PLUGINS names under `key` (e.g. "lms:vllm"), imported now."""
    module, _, name = PLUGINS[key].partition(":")
    return getattr(importlib.import_module(module), name)


class LMSSession(Protocol):
    """One running batch that jobs join as rows free up (continuous batching)."""

    def submit(self, key: Any, job: DecodeJob) -> None: ...

    def has_work(self) -> bool: ...

    def job_keys(self) -> list[Any]: ...

    def cancel(self, keys: set[Any]) -> int: ...

    def step(self) -> list[tuple[Any, DecodeResult]]: ...


class LMSBackend(Protocol):
    """The LMS as the engine sees it."""

    prefix_ids: list[int]  # the shared prompt prefix every job starts with (reported per result)
    forward_passes: int  # LMS passes so far (for a vLLM backend: engine steps)

    def continuous(
        self, max_rows: int | None = None, source: Iterable[DecodeJob] | None = None, refill: bool = True
    ) -> LMSSession: ...

    def decode(self, jobs: list[DecodeJob]) -> list[DecodeResult]: ...

    def stream(self, jobs: Iterable[DecodeJob], max_rows: int, refill: bool = True) -> Iterator[tuple[int, DecodeResult]]: ...


def decode_static(backend: LMSBackend, jobs: list[DecodeJob]) -> list[DecodeResult]:
    """A static batch through any backend's session: every job submitted up front, results in
    job order (what `LMSBackend.decode` means for every backend)."""
    session = backend.continuous(max_rows=None)
    for i, job in enumerate(jobs):
        session.submit(i, job)
    results: list[DecodeResult | None] = [None] * len(jobs)
    while session.has_work():
        for key, result in session.step():
            results[key] = result
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def make_lms_backend(
    bundle: ModelBundle, machine: TemplateMachine, config: CascadeConfig, models: ModelsConfig | None = None
) -> LMSBackend:
    """The configured LMS backend over the bundle's LMS (``models.lms_backend``)."""
    name = models.lms_backend if models is not None else "transformers"
    budgets = Budgets(max_job_tokens=config.max_job_tokens, max_call_tokens=config.max_call_tokens)
    if name == "transformers":
        from hyfunc.cascade.decoder import LMSDecoder

        return LMSDecoder(
            bundle.lms,
            bundle.lms_tokenizer,
            machine,
            bundle.device,
            prefix_cache_bytes=config.prefix_cache_bytes,
            budgets=budgets,
            split_chunks=config.split_chunks,
            pass_overhead_tokens=config.pass_overhead_tokens,
        )
    if name == "vllm":
        VLLMLMSBackend = load_plugin("lms:vllm")
        assert models is not None
        return VLLMLMSBackend.from_bundle(bundle, machine, budgets=budgets, models=models, max_rows=config.batch_size)
    raise ValueError(f"models.lms_backend must be one of {list(LMS_BACKENDS)}, got {name!r}")
