"""Running the cascade for benchmarks: forced (random-init models) or free (trained models).

`run_cascade_forced` is `Cascade.run`'s pipeline stage for stage (one LML pass for the batch,
one retrieval product, one batched LMS decode on the shared-prefix KV cache), with each
row's program wrapped by `workload.forced` so a random-init LMS writes the gold call. If the
random retriever ranks a gold function out of the top-k, it is swapped in for the lowest
non-gold candidate (counted in `swapped`), so the LMS prompt is still top-k sized.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from hyfunc.bench.workload import BenchInput, forced
from hyfunc.cascade.decoder import DecodeJob, RowStats
from hyfunc.schema import Call, CallRequest


@dataclass
class CascadeRow:
    calls: list[Call]
    stats: RowStats
    lml_prompt: int
    error: str | None = None


@dataclass
class CascadeBatch:
    ms: float
    lml_passes: int
    lms_passes: int
    rows: list[CascadeRow] = field(default_factory=list)
    swapped: int = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def run_cascade_forced(cascade, items: list[BenchInput]) -> CascadeBatch:
    bundle = cascade.bundle
    _sync(bundle.device)
    start = time.perf_counter()
    lml_before = cascade.intent.forward_passes
    lms_before = cascade.decoder.forward_passes
    intent = cascade.intent.soft_tokens([item.query for item in items])
    lml_passes = cascade.intent.forward_passes - lml_before
    hits = cascade.retrieve(intent.soft_tokens, [item.tools for item in items])
    projected = bundle.projector(intent.soft_tokens.to(bundle.device, bundle.dtype))
    jobs = []
    swapped = 0
    for i, item in enumerate(items):
        candidates = [hit.tool for hit in hits[i]]
        gold_names = {call.name for call in item.gold}
        for tool in item.tools:
            if tool.name in gold_names and tool not in candidates:
                victims = [j for j, c in enumerate(candidates) if c.name not in gold_names]
                if victims:
                    candidates[victims[-1]] = tool
                else:
                    candidates.append(tool)
                swapped += 1
        soft = projected[i]
        prompt_ids = cascade.job_prompt_ids(item.query, candidates, soft.shape[0])
        jobs.append(DecodeJob(prompt_ids, soft, forced(cascade.machine.program(candidates, item.gold))))
    decoded = cascade.decoder.decode(jobs)
    _sync(bundle.device)
    ms = (time.perf_counter() - start) * 1000
    rows = [CascadeRow(d.calls, d.stats, intent.prompt_tokens[i], d.error) for i, d in enumerate(decoded)]
    return CascadeBatch(ms, lml_passes, cascade.decoder.forward_passes - lms_before, rows, swapped)


def run_cascade_free(cascade, items: list[BenchInput]) -> tuple[float, list]:
    """`Cascade.run` itself (trained models): wall ms for the batch and the CallResults."""
    requests = [CallRequest(id=item.id, query=item.query, tools=item.tools) for item in items]
    _sync(cascade.bundle.device)
    start = time.perf_counter()
    results = cascade.run(requests)
    _sync(cascade.bundle.device)
    return (time.perf_counter() - start) * 1000, results


def load_cascade(models_dir, device: str, dtype: str, top_k: int = 3, index_dir=None):
    from hyfunc.cascade.engine import Cascade
    from hyfunc.config import CascadeConfig
    from hyfunc.models.bundle import ModelBundle

    bundle = ModelBundle.load(models_dir, device=device, dtype=dtype)
    return Cascade(bundle, CascadeConfig(top_k=top_k), index_dir)
