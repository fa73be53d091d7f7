"""Peak memory of a worker-like process: load the models, run jobs, read the peaks.

Measured in a fresh child process so the numbers are one model process's own, not the
benchmark driver's: peak RSS from /proc/self/status (VmHWM) on Linux, else resource.getrusage,
and, on CUDA, torch.cuda.max_memory_allocated. Not ru_maxrss on Linux: it survives fork + exec,
so a child started by a large driver (`hyfunc bench all`) would report the driver's peak.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


def peak_rss_mib() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024.0 * 1024.0) if sys.platform == "darwin" else kib / 1024.0


def measure_worker(models_dir: Path, device: str, dtype: str, jobs: int, source: str, timeout: float = 600) -> dict[str, Any]:
    """Run `python -m hyfunc.bench.memory` on `jobs` inputs; source 'bfcl' (forced) or 'demo' (free)."""
    cmd = [sys.executable, "-m", "hyfunc.bench.memory", str(models_dir), device, dtype, str(jobs), source]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(models_dir: str, device: str, dtype: str, jobs: int, source: str) -> dict[str, Any]:
    import torch

    from hyfunc.bench.runs import load_cascade, run_cascade_forced, run_cascade_free
    from hyfunc.bench.workload import bfcl_inputs, demo_inputs, expressible

    before = peak_rss_mib()
    cascade = load_cascade(models_dir, device, dtype)
    loaded = peak_rss_mib()
    if source == "demo":
        items = demo_inputs(jobs)
        for start in range(0, len(items), 16):
            run_cascade_free(cascade, items[start : start + 16])
    else:
        items, _ = expressible(bfcl_inputs(max(1, jobs // 4)), cascade.machine)
        for start in range(0, len(items), 16):
            run_cascade_forced(cascade, items[start : start + 16])
    out: dict[str, Any] = {
        "models": models_dir,
        "jobs": len(items),
        "rss_before_load_mib": round(before, 1),
        "rss_after_load_mib": round(loaded, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "target_peak_rss_mib": 1024,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        out["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["cuda_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return out


if __name__ == "__main__":
    models, dev, dt, n, src = sys.argv[1:6]
    print(json.dumps(_child(models, dev, dt, int(n), src)))
