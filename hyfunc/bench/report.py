"""One JSON file and one Markdown table per benchmark run."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def default_out_dir(root: str | Path = "runs/bench") -> Path:
    return Path(root) / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def machine_info(device: str) -> dict[str, Any]:
    import os

    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def markdown(report: dict[str, Any]) -> str:
    out = [f"# HyFunc benchmarks — {report['date']}", ""]
    out.append(f"Command: `{report['command']}`  ")
    m = report["machine"]
    out.append(f"Machine: {m.get('gpu') or m.get('cpu')}, {m.get('cpus')} CPUs, torch {m.get('torch')} "
               f"({m.get('torch_threads')} threads), device {m.get('device')}, dtype {report.get('dtype')}, "
               f"load average at start {m.get('load_average')}")
    out.append("")
    results = report["results"]
    if "latency" in results:
        lat = results["latency"]
        out += ["## Latency per call (batch size 1)", ""]
        out.append(f"Inputs: {lat.get('inputs')}; LML:LMS parameters {lat.get('param_ratio_lml_lms')}:1. "
                   f"cascade p50 / LML-only p50 = {lat.get('cascade_over_lml_p50')} (target ≤ 0.25).")
        out.append("")
        headers = ["row", "mode", "params", "n", "p50 ms", "p95 ms", "LML passes", "LMS passes",
                   "prefilled", "generated", "injected", "accuracy"]
        out += _table(headers, [[x["row"], x["mode"], x["params"], x["n"], x["p50_ms"], x["p95_ms"], x.get("lml_passes"),
                                 x.get("lms_passes"), x.get("prefilled"), x.get("generated"), x.get("injected"),
                                 x.get("accuracy")] for x in lat["rows"]])
        out.append("")
    if "throughput" in results:
        out += ["## Throughput (cascade)", ""]
        for label, series in results["throughput"].items():
            if not isinstance(series, dict) or "points" not in series:
                continue
            out.append(f"{label} — {series['mode']}")
            out.append("")
            out += _table(["batch size", "jobs", "jobs/s", "× batch 1", "LML passes/batch"],
                          [[p["batch_size"], p["jobs"], p["jobs_per_s"], p["speedup_vs_batch1"], p["lml_passes_per_batch"]]
                           for p in series["points"]])
            out.append("")
        if results["throughput"].get("plot"):
            out += [f"Plot: `{results['throughput']['plot']}`", ""]
    if "tokens" in results:
        tok = results["tokens"]
        out += ["## Generated tokens vs full-call generation", ""]
        ideal = tok.get("ideal")
        if ideal:
            out += _table(["category", "examples", "generated", "full call", "reduction"],
                          [[c, v["examples"], v["generated"], v["full_call"], v["reduction"]]
                           for c, v in ideal["per_category"].items()]
                          + [["overall", None, None, None, ideal["overall"]]])
            out.append("")
            out.append(f"Ideal: BFCL v4 gold calls, {ideal['tokenizer']}, teacher mode (DESIGN: {ideal['design_reference']}).")
            out.append("")
        actual = tok.get("actual")
        if actual:
            if "skipped" in actual:
                out.append(f"Actual outputs: skipped — {actual['skipped']}")
            else:
                out.append(f"Actual outputs ({actual['models']}): {actual['outputs']}/{actual['of']} calls, generated "
                           f"{actual['generated']} vs full {actual['full_call']} tokens: reduction {actual['reduction']} "
                           "(target ≥ 0.65)")
            out.append("")
    if "service" in results:
        svc = results["service"]
        out += ["## Service (API → Redis → Celery → PostgreSQL)", ""]
        if "skipped" in svc:
            out += [f"Skipped — {svc['skipped']}", ""]
        else:
            out += _table(["metric", "value"], [[k, v] for k, v in svc.items() if not isinstance(v, (dict, list))])
            out.append("")
    if "memory" in results:
        out += ["## Memory", ""]
        rows = []
        for label, mem in results["memory"].items():
            if isinstance(mem, dict):
                rows.append([label, mem.get("peak_rss_mib"), mem.get("rss_after_load_mib"),
                             mem.get("cuda_peak_allocated_mib"), mem.get("error") or mem.get("skipped")])
        out += _table(["process", "peak RSS MiB", "RSS after load MiB", "CUDA peak MiB", "note"], rows)
        out.append("")
    if "constraints" in results:
        from hyfunc.bench.constraints import markdown_section

        out += markdown_section(results["constraints"])
    if "pretrained" in results:
        from hyfunc.bench.pretrained import markdown_section as pretrained_section

        out += pretrained_section(results["pretrained"])
    if report.get("errors"):
        out += ["## Errors", ""] + [f"- {k}: {v}" for k, v in report["errors"].items()] + [""]
    return "\n".join(out)


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "bench.json"
    md_path = out_dir / "bench.md"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    md_path.write_text(markdown(report) + "\n")
    return json_path, md_path
