"""Speed of a cascade whose LMS is a pretrained base (a pulled SmolLM2-135M or Gemma 3 270M).

By default the models measured are the demo cascade's MiniLM intent model and retriever with the
LMS swapped for the pulled base and a zero projector (its soft slot adds nothing); `--trained DIR`
measures a models directory with a fine-tuned base LMS instead (e.g. `models/general`, the LoRA
SmolLM2 the default config serves). What an untuned LMS writes is not what a tuned one would, but
the work per job — the prompt, the passes, the head — is the same shape, and the counts of tokens
and passes are reported beside the times.

Rows: p50 ms per call at batch 1 and jobs/s at batch 1 and 32, per dtype (float32 and bfloat16:
on a CPU with AVX-512 BF16 the half-width weights are read and multiplied much faster), after a
warm-up run of the same toolsets with other queries (each query prefixed with a greeting), so the
prefix cache holds the candidates' schemas but none of the measured queries — the steady state
of a service that keeps seeing the same toolsets.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from hyfunc.bench.stats import percentile, r

DEFAULT_BASE = "smollm2-135m-instruct"


def write_base_lms_models(dest: Path, demo_dir: Path, base: str = DEFAULT_BASE) -> Path:
    """A models directory: ``demo_dir``'s intent model and retriever, ``base:<base>`` as the LMS and
    a zero projector sized for it. The base must be pulled (`hyfunc models pull BASE`)."""
    import torch

    from hyfunc.models.bundle import save_module, stamp_versions
    from hyfunc.models.cache import base_dir, read_marker
    from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector

    directory = base_dir(base)
    if read_marker(directory) is None:
        raise FileNotFoundError(f"{base} is not pulled: run `hyfunc models pull {base}`")
    config = json.loads((directory / "config.json").read_text())
    hidden = int(config.get("hidden_size") or config["text_config"]["hidden_size"])
    dest.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((demo_dir / "hyfunc.json").read_text())
    shutil.copytree(demo_dir / manifest["retriever_path"], dest / "retriever", dirs_exist_ok=True)
    demo_projector = json.loads((demo_dir / manifest["projector_path"] / "config.json").read_text())
    projector = SoftTokenProjector(ProjectorConfig(input_dim=demo_projector["input_dim"], output_dim=hidden,
                                                   hidden_dim=16, num_tokens=demo_projector["num_tokens"]))
    with torch.no_grad():
        for p in projector.parameters():
            p.zero_()
    save_module(projector, projector.config_dict(), dest / "projector")
    manifest.update({"name": f"hyfunc-demo-{base}", "lms_path": f"base:{base}", "retriever_path": "retriever",
                     "projector_path": "projector", "versions": {}})
    # The base was never trained on best-first prompts: serve the cache-friendly canonical order.
    manifest.setdefault("decoding", {})["prompt_order"] = "canonical"
    (dest / "hyfunc.json").write_text(json.dumps(manifest, indent=2) + "\n")
    stamp_versions(dest)
    return dest


def bench_pretrained(demo_dir: Path | None, base: str = DEFAULT_BASE, n: int = 32, device: str = "cpu",
                     dtypes: tuple[str, ...] | None = None, log=print, trained: Path | None = None) -> dict[str, Any]:
    """``trained``: a models directory whose LMS is a fine-tuned base (e.g. models/general), measured
    as it is served, instead of the untuned base with a zero projector."""
    import tempfile

    from hyfunc.models.cache import base_dir, read_marker
    from hyfunc.models.pull import REGISTRY

    if trained is not None:
        if not (trained / "hyfunc.json").is_file():
            return {"skipped": f"{trained} is not a models directory (no hyfunc.json)"}
        lms_path = json.loads((trained / "hyfunc.json").read_text()).get("lms_path", "")
        dtypes = dtypes or (("bfloat16",) if device.startswith("cuda") else ("float32", "bfloat16"))
        out = {"base": f"{trained} ({lms_path}, fine-tuned)", "jobs": n, "device": device,
               "targets": {"jobs_per_s_at_batch_32": 3.0, "p50_ms_at_batch_1": 600.0}}
        for dtype in dtypes:
            out[dtype] = _measure(trained, n, device, dtype, log)
        return out
    if demo_dir is None:
        return {"skipped": "no demo models (the intent model and retriever come from them)"}
    if base not in REGISTRY:
        return {"skipped": f"unknown base {base!r}; known: {', '.join(sorted(REGISTRY))}"}
    if read_marker(base_dir(base)) is None:
        return {"skipped": f"{base} is not pulled (`hyfunc models pull {base}`)"}
    dtypes = dtypes or (("bfloat16",) if device.startswith("cuda") else ("float32", "bfloat16"))
    out: dict[str, Any] = {"base": base, "jobs": n, "device": device,
                           "targets": {"jobs_per_s_at_batch_32": 4.0, "p50_ms_at_batch_1": 500.0}}
    with tempfile.TemporaryDirectory(prefix="hyfunc-bench-pretrained-") as tmp:
        models = write_base_lms_models(Path(tmp) / "models", demo_dir, base)
        for dtype in dtypes:
            out[dtype] = _measure(models, n, device, dtype, log)
    return out


def _measure(models: Path, n: int, device: str, dtype: str, log) -> dict[str, Any]:
    from dataclasses import replace

    from hyfunc.bench.runs import load_cascade, run_cascade_free
    from hyfunc.bench.workload import demo_inputs

    def warm_up(items: list) -> None:
        """Each measured run starts from the same state: a cache warmed by other queries only."""
        if cascade.decoder.cache is not None:
            cascade.decoder.cache.clear()
        log(f"[pretrained {dtype}] warm-up: {len(items)} jobs, other queries on the same toolsets")
        run_cascade_free(cascade, [replace(item, query="Hi! " + item.query) for item in items])

    items = demo_inputs(n)
    cascade = load_cascade(models, device, dtype)
    cascade.config.batch_size = n  # one decoder row per job of the batch
    out: dict[str, Any] = {"lms_parameters": sum(p.numel() for p in cascade.bundle.lms.parameters()),
                           "vocab": int(cascade.bundle.lms.config.vocab_size), "dtype": dtype}
    points = {}
    per_call: list[float] = []
    for size in (n, 1):
        warm_up(items)
        start = time.perf_counter()
        results = []
        for s in range(0, n, size):
            ms, res = run_cascade_free(cascade, items[s : s + size])
            results.extend(res)
            if size == 1:
                per_call.append(ms)
        wall = time.perf_counter() - start
        log(f"[pretrained {dtype}] batch {size}: {n / wall:.2f} jobs/s")
        points[size] = {
            "jobs_per_s": r(n / wall, 3),
            "wall_s": r(wall, 2),
            "lms_passes_per_job": r(sum(x.forward_passes.lms for x in results) / n, 2),
            "prompt_computed_per_job": r(sum(x.tokens.prompt_computed for x in results) / n, 1),
            "prompt_reused_per_job": r(sum(x.tokens.prompt_reused for x in results) / n, 1),
            "generated_per_job": r(sum(x.tokens.generated for x in results) / n, 2),
            "injected_per_job": r(sum(x.tokens.injected for x in results) / n, 2),
            "errors": sum(1 for x in results if x.error),
        }
    out["batch 1"] = points[1] | {"p50_ms_per_call": r(percentile(per_call, 50), 1),
                                  "p95_ms_per_call": r(percentile(per_call, 95), 1)}
    out[f"batch {n}"] = points[n]
    out["batch_over_batch1"] = r(points[n]["jobs_per_s"] / points[1]["jobs_per_s"], 2)
    # A service keeps its rows full: 2n jobs through n rows (continuous batching), so the batch's
    # longest jobs no longer run alone at the end.
    stream = demo_inputs(2 * n)
    warm_up(stream)
    start = time.perf_counter()
    _, results = run_cascade_free(cascade, stream)
    wall = time.perf_counter() - start
    log(f"[pretrained {dtype}] {2 * n} jobs through {n} rows: {2 * n / wall:.2f} jobs/s")
    out[f"stream {2 * n} jobs, {n} rows"] = {"jobs_per_s": r(2 * n / wall, 3), "wall_s": r(wall, 2),
                                             "errors": sum(1 for x in results if x.error)}
    return out


def markdown_section(result: dict[str, Any]) -> list[str]:
    out = ["## Pretrained LMS (speed)", ""]
    if "skipped" in result:
        return out + [f"Skipped — {result['skipped']}", ""]
    n = result["jobs"]
    what = ("as served (fine-tuned)" if "fine-tuned" in str(result["base"])
            else "as the LMS (untuned, zero projector; the demo intent model and retriever)")
    out.append(f"{result['base']} {what}, "
               f"{n} demo held-out jobs, prefix cache warmed by other queries on the same toolsets. "
               f"Targets: ≥ {result['targets']['jobs_per_s_at_batch_32']} jobs/s at batch 32, "
               f"p50 ≤ {result['targets']['p50_ms_at_batch_1']} ms at batch 1.")
    out.append("")
    rows = []
    for dtype in ("float32", "bfloat16", "float16"):
        x = result.get(dtype)
        if not isinstance(x, dict):
            continue
        b1, bn = x["batch 1"], x[f"batch {n}"]
        stream = x.get(f"stream {2 * n} jobs, {n} rows", {})
        rows.append([dtype, b1["p50_ms_per_call"], b1["p95_ms_per_call"], b1["jobs_per_s"], bn["jobs_per_s"],
                     x["batch_over_batch1"], stream.get("jobs_per_s"), b1["lms_passes_per_job"], bn["lms_passes_per_job"],
                     b1["prompt_computed_per_job"], b1["generated_per_job"], b1["injected_per_job"]])
    headers = ["dtype", "p50 ms b1", "p95 ms b1", "jobs/s b1", f"jobs/s b{n}", f"b{n} / b1", f"jobs/s, {2 * n} jobs via {n} rows",
               "LMS passes/job b1", f"LMS passes/job b{n}", "prompt computed/job", "generated/job", "injected/job"]
    out += [f"| {' | '.join(headers)} |", "|" + "---|" * len(headers)]
    out += [f"| {' | '.join('–' if v is None else str(v) for v in row)} |" for row in rows]
    return out + [""]
