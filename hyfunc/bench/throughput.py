"""Cascade throughput at batch sizes 1..32 (jobs per second), with a PNG plot."""

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
    cascade, inputs: list[BenchInput], jobs: int = 32, batch_sizes: tuple[int, ...] = BATCH_SIZES, free: bool = False
) -> dict[str, Any]:
    """Run the same `jobs` inputs at each batch size; jobs/s = jobs / total wall time."""
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
    return {"mode": "free (trained)" if free else "forced (gold tokens, random-init)", "points": points,
            "target_batch32_over_batch1": 6.0}


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
