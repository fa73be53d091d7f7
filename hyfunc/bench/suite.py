"""`hyfunc bench KIND`: set up the workload once, run the chosen benchmarks, write the report."""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

KINDS = ("latency", "throughput", "tokens", "service", "memory", "constraints", "pretrained")
DEMO_MODELS = Path("models/demo")


@dataclass
class BenchOptions:
    device: str = "cpu"
    dtype: str | None = None  # default: bfloat16 on CUDA, float32 on CPU
    out: Path | None = None
    per_category: int = 5  # BFCL inputs per category for latency
    throughput_jobs: int = 32
    service_jobs: int = 64
    demo_models: Path | None = None
    demo_n: int = 32
    tokens_limit: int = 0
    threads: int | None = None
    seed: int = 0
    tokenizers: dict[str, str] | None = None  # bench constraints: extra vocabularies, name -> directory
    base: str = "smollm2-135m-instruct"  # bench pretrained: the pulled base used as the LMS
    trained: Path | None = None  # bench pretrained: a fine-tuned models directory measured as served


def _demo_dir(options: BenchOptions) -> Path | None:
    path = options.demo_models or DEMO_MODELS
    return path if (path / "hyfunc.json").is_file() else None


def run_bench(kinds: list[str], options: BenchOptions, log=print) -> tuple[dict[str, Any], Path]:
    import torch

    from hyfunc.bench.report import default_out_dir, machine_info, write_report
    from hyfunc.bench.workload import (
        bench_corpus,
        bfcl_inputs,
        demo_inputs,
        expressible,
        write_bench_models,
    )

    if options.threads:
        torch.set_num_threads(options.threads)
    dtype = options.dtype or ("bfloat16" if options.device.startswith("cuda") else "float32")
    out = options.out or default_out_dir()
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "hyfunc " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "",
        "machine": machine_info(options.device),
        "dtype": dtype,
        "results": {},
        "errors": {},
        "seconds": {},
    }
    demo_dir = _demo_dir(options)
    report["demo_models"] = str(demo_dir) if demo_dir else None
    needs_models = any(k in kinds for k in ("latency", "throughput", "memory", "service"))
    with tempfile.TemporaryDirectory(prefix="hyfunc-bench-models-") as tmp:
        cascade = inputs = None
        demo_cascade = demo_items = None
        models_dir = Path(tmp) / "bench"
        if needs_models:
            from hyfunc.bench.runs import load_cascade
            from hyfunc.bench.workload import BENCH_LML, BENCH_LMS

            log("writing random-init bench models (LML:LMS ~13:1)")
            write_bench_models(models_dir, bench_corpus(bfcl_inputs(0)), seed=options.seed)
            cascade = load_cascade(models_dir, options.device, dtype)
            inputs, dropped = expressible(bfcl_inputs(options.per_category, options.seed), cascade.machine)
            report["bench_models"] = {"lml": vars(BENCH_LML), "lms": vars(BENCH_LMS), "inputs": len(inputs),
                                      "inexpressible_dropped": dropped}
            if demo_dir is not None:
                demo_cascade = load_cascade(demo_dir, options.device, dtype)
                demo_items = demo_inputs(options.demo_n)
        for kind in kinds:
            start = time.perf_counter()
            log(f"bench {kind} ...")
            try:
                report["results"][kind] = _run_one(kind, options, dtype, out, cascade, inputs, demo_cascade,
                                                   demo_items, demo_dir, models_dir)
            except Exception as err:  # noqa: BLE001 - one failing benchmark must not lose the others
                report["errors"][kind] = f"{type(err).__name__}: {err}"
                log(traceback.format_exc())
            report["seconds"][kind] = round(time.perf_counter() - start, 1)
    from hyfunc.bench.memory import peak_rss_mib

    report["driver_peak_rss_mib"] = round(peak_rss_mib(), 1)
    if options.device.startswith("cuda") and torch.cuda.is_available():
        report["driver_cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    write_report(out, report)
    return report, out


def _run_one(kind, options, dtype, out, cascade, inputs, demo_cascade, demo_items, demo_dir, models_dir):
    if kind == "latency":
        from hyfunc.bench.latency import bench_latency

        return bench_latency(cascade, inputs, demo_cascade, demo_items)
    if kind == "throughput":
        from hyfunc.bench.throughput import bench_throughput, plot_throughput

        extra = {"continuous_jobs": 64, "prefix_jobs": 1000}  # continuous vs static; prompt-token reuse
        result: dict[str, Any] = {"bench models": bench_throughput(cascade, inputs, options.throughput_jobs, **extra)}
        if demo_cascade is not None:
            result["demo models"] = bench_throughput(demo_cascade, demo_items, options.throughput_jobs, free=True,
                                                     **extra)
        plot = plot_throughput({k: v for k, v in result.items() if isinstance(v, dict)}, out / "throughput.png",
                               f"HyFunc cascade throughput ({options.device}, {dtype})")
        result["plot"] = str(plot)
        return result
    if kind == "tokens":
        from hyfunc.bench.qwen_tokenizer import load_qwen_tokenizer
        from hyfunc.bench.tokens import actual_reduction, ideal_reduction

        result = {"ideal": ideal_reduction(load_qwen_tokenizer(), limit=options.tokens_limit)}
        if demo_cascade is not None:
            result["actual"] = actual_reduction(demo_cascade, demo_items)
        elif demo_dir is not None:
            from hyfunc.bench.runs import load_cascade
            from hyfunc.bench.workload import demo_inputs

            result["actual"] = actual_reduction(load_cascade(demo_dir, options.device, dtype), demo_inputs(options.demo_n))
        else:
            result["actual"] = {"skipped": f"no trained demo models at {options.demo_models or DEMO_MODELS} "
                                          "(train them with `hyfunc train demo`, or pass --demo-models DIR)"}
        return result
    if kind == "memory":
        from hyfunc.bench.memory import measure_worker

        result = {"worker (bench models)": measure_worker(models_dir, options.device, dtype, 16, "bfcl")}
        if demo_dir is not None:
            result["worker (demo models)"] = measure_worker(demo_dir, options.device, dtype, options.demo_n, "demo")
        else:
            result["worker (demo models)"] = {"skipped": "no demo models"}
        return result
    if kind == "service":
        from hyfunc.bench.service import bench_service
        from hyfunc.bench.workload import demo_inputs

        if demo_dir is not None:
            return bench_service(demo_dir, demo_items or demo_inputs(options.demo_n), jobs=options.service_jobs,
                                 device=options.device, dtype=dtype)
        return bench_service(models_dir, inputs, jobs=options.service_jobs, device=options.device, dtype=dtype)
    if kind == "constraints":
        from hyfunc.bench.constraints import bench_constraints

        return bench_constraints(demo_dir, options.demo_n, options.tokenizers)
    if kind == "pretrained":
        from hyfunc.bench.pretrained import bench_pretrained

        return bench_pretrained(demo_dir, base=options.base, device=options.device,
                                log=lambda m: print(m, file=sys.stderr), trained=options.trained)
    raise ValueError(f"unknown benchmark {kind!r}; choose from {', '.join(KINDS)} or all")
