"""Cascade throughput at batch sizes 1..32 (jobs per second), with a PNG plot; continuous vs
static batching; prompt tokens computed per job with and without the radix prefix cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hyfunc.bench.runs import run_cascade_forced, run_cascade_free
from hyfunc.bench.stats import r
from hyfunc.bench.workload import BenchInput

BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def _cycle(items: list[BenchInput], n: int) -> list[BenchInput]:
    return [items[i % len(items)] for i in range(n)]


def bench_throughput(
    cascade,
    inputs: list[BenchInput],
    jobs: int = 32,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    free: bool = False,
    continuous_jobs: int = 0,
    prefix_jobs: int = 0,
) -> dict[str, Any]:
    """Run the same `jobs` inputs at each batch size; jobs/s = jobs / total wall time. Then
    continuous vs static batching (`continuous_jobs` jobs through 8 rows) and the prefix cache's
    prompt-token reuse (`prefix_jobs` jobs over 5 toolsets of 10 tools); 0 skips either."""
    run = run_cascade_free if free else run_cascade_forced
    work = _cycle(inputs, max(jobs, max(batch_sizes)))
    run(cascade, work[: max(batch_sizes)])  # warm-up at the largest shape, index filled
    points = []
    for size in batch_sizes:
        total_ms = 0.0
        lml_passes = 0
        batches = 0
        for start in range(0, len(work), size):
            chunk = work[start : start + size]
            before = cascade.intent.forward_passes
            out = run(cascade, chunk)
            total_ms += out[0] if free else out.ms
            lml_passes += cascade.intent.forward_passes - before
            batches += 1
        points.append({
            "batch_size": size,
            "jobs": len(work),
            "wall_ms": r(total_ms),
            "jobs_per_s": r(len(work) / (total_ms / 1000.0), 3),
            "lml_passes_per_batch": r(lml_passes / batches, 3),
        })
    base = points[0]["jobs_per_s"] or 0.0
    for p in points:
        p["speedup_vs_batch1"] = r(p["jobs_per_s"] / base, 2) if base else None
    out: dict[str, Any] = {"mode": "free (trained)" if free else "forced (gold tokens, random-init)", "points": points,
                           "target_batch32_over_batch1": 6.0}
    if continuous_jobs:
        out["continuous_vs_static"] = bench_continuous(cascade, inputs, continuous_jobs, rows=8, free=free)
    if prefix_jobs:
        out["prefix_cache"] = bench_prefix(cascade, prefix_jobs)
    return out


def plot_throughput(series: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, result in series.items():
        xs = [p["batch_size"] for p in result["points"]]
        ys = [p["jobs_per_s"] for p in result["points"]]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(BATCH_SIZES), [str(b) for b in BATCH_SIZES])
    ax.set_xlabel("batch size")
    ax.set_ylabel("jobs / s")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- continuous vs static batching -------------------------------------------------------------------


def _forced_jobs(cascade, items: list[BenchInput]):
    """The forced-decoding jobs of `runs.run_cascade_forced` (one LML pass and one retrieval for
    all items), yielded one at a time so the decoder builds each program when a row is free."""
    import torch

    from hyfunc.bench.workload import forced
    from hyfunc.cascade.decoder import DecodeJob

    bundle = cascade.bundle
    with torch.inference_mode():
        intent = cascade.intent.soft_tokens([item.query for item in items])
        hits = cascade.retrieve(intent.soft_tokens, [item.tools for item in items])
        projected = bundle.projector(intent.soft_tokens.to(bundle.device, bundle.dtype))
    for i, item in enumerate(items):
        candidates = [hit.tool for hit in hits[i]]
        for tool in item.tools:  # the gold tools are always shown (random-init retriever)
            if tool.name in {c.name for c in item.gold} and tool not in candidates:
                candidates.append(tool)
        ids = cascade.job_prompt_ids(item.query, candidates, projected[i].shape[0])
        yield DecodeJob(ids, projected[i], forced(cascade.machine.program(candidates, item.gold)))


def bench_continuous(
    cascade, inputs: list[BenchInput], jobs: int = 64, rows: int = 8, free: bool = False
) -> dict[str, Any]:
    """The same `jobs` inputs through at most `rows` decoder rows: static batches of `rows` (a batch
    runs until its longest job ends) vs continuous batching (a finished row takes the next job at
    once). Free mode runs `Cascade.run` with cascade.continuous off/on; forced mode streams the
    forced-decoding jobs through the decoder. Each mode runs twice, the better run counts."""
    import time

    from hyfunc.bench.runs import run_cascade_free

    work = _cycle(inputs, jobs)
    config = cascade.config
    saved = (config.batch_size, config.continuous)
    out: dict[str, Any] = {"jobs": jobs, "rows": rows, "mode": "free (trained)" if free else "forced (gold tokens)"}
    try:
        config.batch_size = rows
        for label, refill in (("warm-up", True), ("static", False), ("continuous", True)):
            best = None
            for _ in range(1 if label == "warm-up" else 2):
                passes = cascade.decoder.forward_passes
                if free:
                    config.continuous = refill
                    ms, results = run_cascade_free(cascade, work)
                    rows_used = sum(res.forward_passes.lms for res in results)
                else:
                    start = time.perf_counter()
                    done = dict(cascade.decoder.stream(_forced_jobs(cascade, work), max_rows=rows, refill=refill))
                    ms = (time.perf_counter() - start) * 1000
                    rows_used = sum(res.stats.forward_passes for res in done.values())
                    errors = [res.error for res in done.values() if res.error]
                    if errors:
                        raise RuntimeError(f"forced decoding failed: {errors[0]}")
                passes = cascade.decoder.forward_passes - passes
                point = {"wall_ms": r(ms), "jobs_per_s": r(jobs / (ms / 1000.0), 3), "lms_passes": passes,
                         "mean_rows_per_pass": r(rows_used / passes, 2) if passes else None}
                if best is None or point["wall_ms"] < best["wall_ms"]:
                    best = point
            if label != "warm-up":
                out[label] = best
    finally:
        config.batch_size, config.continuous = saved
    static, cont = out["static"]["jobs_per_s"], out["continuous"]["jobs_per_s"]
    out["continuous_over_static"] = r(cont / static, 3) if static else None
    out["target_continuous_over_static"] = 1.3
    return out


# -- prompt-token reuse: the radix prefix cache ------------------------------------------------------


def prefix_workload(jobs: int = 1000, toolsets: int = 5, per_set: int = 10, seed: int = 0) -> list[tuple[str, list]]:
    """`jobs` (query, toolset) pairs over `toolsets` toolsets of `per_set` tools each, from the demo
    task's tool library (not BFCL): each query is one whose answer uses a tool of its toolset."""
    import random

    from hyfunc.data.demo_task import generate_demo_examples

    examples = generate_demo_examples("heldout", min(4000, 200 + 4 * jobs), seed + 7)
    library: dict[str, Any] = {}
    for ex in examples:
        for tool in ex.tools:
            library.setdefault(tool.name, tool)
    names = sorted(library)
    if len(names) < per_set:
        raise ValueError(f"the demo library has {len(names)} tools, fewer than {per_set} per toolset")
    rng = random.Random(seed)
    # Each toolset a random sample of the library (toolsets may overlap, as real ones do).
    sets = [rng.sample(names, per_set) for _ in range(toolsets)]
    queries: list[list[str]] = [[] for _ in sets]
    for ex in examples:
        if ex.answers:
            for k, names_k in enumerate(sets):
                if ex.answers[0].name in names_k:
                    queries[k].append(ex.query)
    out = []
    for j in range(jobs):
        k = j % toolsets
        pool = queries[k] or [ex.query for ex in examples]
        out.append((pool[(j // toolsets) % len(pool)], [library[n] for n in sets[k]]))
    return out


def _prefill_only():
    """A program with one forced decision: the decoder prefills the prompt and stops."""
    from hyfunc.cascade.template import Generate

    yield Generate([0])
    return []


def bench_prefix(cascade, jobs: int = 1000, toolsets: int = 5, per_set: int = 10, rows: int = 16) -> dict[str, Any]:
    """LMS prompt tokens computed per job on `jobs` jobs over `toolsets` toolsets of `per_set` tools:
    candidates from the cascade's own retrieval (top-k of the job's toolset), prompts prefilled
    through the decoder (one decision each, so only the prompt is measured) without the prefix
    cache (today), with it in retrieval order, and with it in canonical order (served)."""
    import time

    import torch

    from hyfunc.cascade.decoder import DecodeJob, LMSDecoder
    from hyfunc.cascade.prompts import lms_job_ids

    work = prefix_workload(jobs, toolsets, per_set)
    bundle = cascade.bundle
    prepared = []  # (soft, candidates in retrieval order, query)
    with torch.inference_mode():
        for start in range(0, len(work), 64):
            chunk = work[start : start + 64]
            intent = cascade.intent.soft_tokens([q for q, _ in chunk])
            hits = cascade.retrieve(intent.soft_tokens, [tools for _, tools in chunk])
            projected = bundle.projector(intent.soft_tokens.to(bundle.device, bundle.dtype))
            for i, (query, _) in enumerate(chunk):
                prepared.append((projected[i], [h.tool for h in hits[i]], query))
    cache_bytes = cascade.config.prefix_cache_bytes or 256 * 2**20

    def run(order: str, cache: int) -> dict[str, Any]:
        decoder = LMSDecoder(bundle.lms, bundle.lms_tokenizer, cascade.machine, bundle.device,
                             prefix_cache_bytes=cache)
        decoder.shared_prefix()

        def stream():
            for soft, candidates, query in prepared:
                ids = lms_job_ids(bundle.lms_tokenizer, query, candidates, soft.shape[0], order)
                yield DecodeJob(ids, soft, _prefill_only())

        start = time.perf_counter()
        done = dict(decoder.stream(stream(), max_rows=rows))
        ms = (time.perf_counter() - start) * 1000
        stats = [done[i].stats for i in range(len(prepared))]
        out = {
            "prompt_tokens_per_job": r(sum(s.prompt_tokens for s in stats) / len(stats), 1),
            "computed_per_job": r(sum(s.prompt_computed for s in stats) / len(stats), 1),
            "reused_per_job": r(sum(s.prompt_reused for s in stats) / len(stats), 1),
            "prefill_ms_per_job": r(ms / len(stats), 3),
            "lms_passes": decoder.forward_passes,
        }
        if decoder.cache is not None:
            out["cache_mib"] = r(decoder.cache.nbytes / 2**20, 1)
            out["cache_evicted_tokens"] = decoder.cache.stats.evicted_tokens
        return out

    result: dict[str, Any] = {"jobs": jobs, "toolsets": toolsets, "tools_per_set": per_set, "rows": rows,
                              "top_k": cascade.config.top_k, "cache_bytes": cache_bytes}
    result["no cache (today)"] = run("canonical", 0)
    result["cache, retrieval order"] = run("retrieval", cache_bytes)
    result["cache, canonical order (served)"] = run("canonical", cache_bytes)
    base = result["no cache (today)"]
    served = result["cache, canonical order (served)"]
    result["computed_over_today"] = r(served["computed_per_job"] / base["computed_per_job"], 3)
    result["prefill_time_over_today"] = r(served["prefill_ms_per_job"] / base["prefill_ms_per_job"], 3)
    result["target_computed_over_today"] = 0.3
    return result


def main(argv: list[str] | None = None) -> None:
    """`python -m hyfunc.bench.throughput continuous|prefix [--models DIR] ...`: one row on its own
    (`hyfunc bench throughput` runs both with the batch-size sweep). Without --models: the
    random-init bench models (forced decoding); with a trained models directory: free decoding."""
    import argparse
    import json
    import tempfile

    import torch

    from hyfunc.bench.runs import load_cascade
    from hyfunc.bench.workload import (
        bench_corpus,
        bfcl_inputs,
        demo_inputs,
        expressible,
        write_bench_models,
    )

    parser = argparse.ArgumentParser(prog="python -m hyfunc.bench.throughput")
    parser.add_argument("row", choices=("continuous", "prefix"))
    parser.add_argument("--models", type=Path, help="a trained models directory (default: random-init bench models)")
    parser.add_argument("--jobs", type=int, default=None, help="default: 64 (continuous), 1000 (prefix)")
    parser.add_argument("--rows", type=int, default=None, help="decoder rows; default: 8 (continuous), 16 (prefix)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="hyfunc-bench-models-") as tmp:
        if args.models is None:
            models = Path(tmp) / "bench"
            write_bench_models(models, bench_corpus(bfcl_inputs(0)), seed=0)
            cascade = load_cascade(models, "cpu", "float32")
            inputs, _ = expressible(bfcl_inputs(5, 0), cascade.machine)
        else:
            cascade = load_cascade(args.models, "cpu", "float32")
            inputs = demo_inputs(32)
        if args.row == "continuous":
            out = bench_continuous(cascade, inputs, args.jobs or 64, rows=args.rows or 8, free=args.models is not None)
        else:
            out = bench_prefix(cascade, args.jobs or 1000, rows=args.rows or 16)
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
