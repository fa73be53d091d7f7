"""`hyfunc bench backends`: the LMS backends side by side, same models, same jobs.

Three ways to turn the demo held-out jobs into calls with the same LMS weights:

- ``transformers``: the cascade with our decoder (scheduler / runner / sampler; injected chunks
  appended in one pass; radix prefix cache);
- ``vllm``: the cascade with the vLLM backend (``hyfunc/backends/vllm_lms.py``: one request chain per
  job, the template program as a logits processor, vLLM's automatic prefix cache, injections
  handed back into the next request's prompt); ``vllm-no-jump``: the same with every injected
  token emitted in a step of its own (one request per job);
- ``vllm-structured``: what a user would pick instead — plain vLLM structured output: the LMS
  prompt with every tool of the request (no retriever, no soft token), the whole answer generated
  as JSON under a schema of the tools' calls (``StructuredOutputsParams(json=...)``), no templating;
  ``vllm-gold-json``: the same prompts with the gold answer's compact JSON forced token by token
  (no grammar): what structured output costs with a model that writes exactly the right call.

Both cascades share the transformers LML, retriever and projector, so any difference between
them is the LMS backend's. Reported per mode and batch size: jobs/s, p50/p95 of a job's latency
(its batch's wall time, the same measure for all three), tokens generated and injected per job,
LMS forward passes (batched passes for ours, engine steps for vLLM), exact match against the gold
calls. Plus the same-calls check: every demo held-out job through both cascades, each difference
listed (``--same-n``), and the same on a BFCL sample (``--bfcl CATEGORIES --bfcl-n N``: the first
N loadable questions of each category; BFCL is evaluation data only). ``--throughput-jobs 0``
runs the same-calls checks alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyfunc.bench.report import machine_info
from hyfunc.bench.stats import percentile, r

MODES = ("transformers", "vllm", "vllm-no-jump", "vllm-structured", "vllm-gold-json")


def _calls(result) -> list[dict[str, Any]]:
    return [c.model_dump() for c in result.calls]


def load_cascades(models_dir: Path, device: str, dtype: str, index_dir: Path, batch_size: int):
    """(transformers cascade, vLLM cascade): one bundle, the LMS served twice."""
    from hyfunc.cascade.engine import Cascade
    from hyfunc.config import CascadeConfig, ModelsConfig
    from hyfunc.models.bundle import ModelBundle

    bundle = ModelBundle.load(models_dir, device=device, dtype=dtype)
    config = CascadeConfig(batch_size=batch_size)
    hf = Cascade(bundle, config, index_dir, models=ModelsConfig(dir=str(models_dir), device=device, dtype=dtype))
    vl = Cascade(
        bundle, config, index_dir, models=ModelsConfig(dir=str(models_dir), device=device, dtype=dtype, lms_backend="vllm")
    )
    return hf, vl


def same_calls(hf, vl, examples, batch_size: int, log: Callable[[str], None], label: str = "demo") -> dict[str, Any]:
    """Every example through both cascades (batches of ``batch_size``); the differences listed."""
    from hyfunc.schema import CallRequest

    differences = []
    with_calls = errors = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        requests = [CallRequest(id=str(start + i), query=ex.query, tools=ex.tools) for i, ex in enumerate(chunk)]
        a, b = hf.run(requests), vl.run(requests)
        with_calls += sum(bool(x.calls) for x in a)
        errors += sum(x.error is not None for x in a)
        for i, (ex, x, y) in enumerate(zip(chunk, a, b, strict=True)):
            if (_calls(x), x.error) != (_calls(y), y.error):
                differences.append(
                    {
                        "id": str(getattr(ex, "id", None) or start + i),
                        "query": ex.query,
                        "transformers": {"calls": _calls(x), "error": x.error},
                        "vllm": {"calls": _calls(y), "error": y.error},
                        "generated": [x.tokens.generated, y.tokens.generated],
                    }
                )
        log(f"same calls ({label}): {start + len(chunk)}/{len(examples)} jobs, {len(differences)} differ")
    n = len(examples)
    # with_calls / errors: the transformers backend's jobs that returned calls / failed (what the check covers)
    return {"jobs": n, "same": n - len(differences), "agreement": r((n - len(differences)) / n, 4) if n else None,
            "with_calls": with_calls, "errors": errors, "differences": differences}


def bfcl_sample(categories: tuple[str, ...], n: int) -> dict[str, list]:
    """The first ``n`` loadable questions of each BFCL category (bfcl-eval's shipped data)."""
    from hyfunc.data.loaders import load_bfcl_category

    out = {}
    for category in categories:
        examples, _report = load_bfcl_category(category, progress=False, check_answers=False)
        out[category] = examples[:n]
    return out


def _cascade_mode(cascade, examples, batch_size: int) -> dict[str, Any]:
    from hyfunc.eval.scoring import calls_match
    from hyfunc.schema import CallRequest

    latencies, generated, injected, exact = [], 0, 0, 0
    passes_before = cascade.decoder.forward_passes
    start = time.perf_counter()
    for s in range(0, len(examples), batch_size):
        chunk = examples[s : s + batch_size]
        t0 = time.perf_counter()
        results = cascade.run([CallRequest(id=str(s + i), query=ex.query, tools=ex.tools) for i, ex in enumerate(chunk)])
        wall = (time.perf_counter() - t0) * 1000
        for ex, res in zip(chunk, results, strict=True):
            latencies.append(wall)
            generated += res.tokens.generated
            injected += res.tokens.injected
            exact += res.error is None and calls_match(res.calls, ex.answers)
    total = time.perf_counter() - start
    return _row(len(examples), total, latencies, generated, injected, cascade.decoder.forward_passes - passes_before, exact)


def _row(n: int, total: float, latencies: list[float], generated: int, injected: int, passes: int, exact: int) -> dict[str, Any]:
    return {
        "jobs": n,
        "jobs_per_s": r(n / total, 2),
        "p50_ms": r(percentile(latencies, 50), 1),
        "p95_ms": r(percentile(latencies, 95), 1),
        "generated_per_job": r(generated / n, 1),
        "injected_per_job": r(injected / n, 1),
        "lms_passes": passes,
        "exact_match": r(exact / n, 3),
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Of a mode's rounds, the one with the median jobs/s (the lower middle of an even count),
    with every round's jobs/s beside it."""
    ordered = sorted(runs, key=lambda row: row["jobs_per_s"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        row["jobs_per_s_rounds"] = [run["jobs_per_s"] for run in runs]
    return row


def calls_schema(tools, max_calls: int) -> dict[str, Any]:
    """JSON Schema of an answer: a list of calls, each one of the tools with its parameters."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.function.parameters.to_json()},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return {"type": "array", "items": {"anyOf": options}, "minItems": 1, "maxItems": max_calls}


def _structured_mode(vl, examples, batch_size: int, gold: bool = False) -> dict[str, Any]:
    """Plain vLLM structured output on the same engine and weights: no retriever, no soft token,
    no templating — every answer token generated under the calls' JSON schema."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from hyfunc.cascade.prompts import lms_job_prompt, lms_shared_prefix
    from hyfunc.eval.scoring import calls_match
    from hyfunc.schema import Call

    backend = vl.decoder
    tokenizer = vl.bundle.lms_tokenizer
    prefix = lms_shared_prefix(tokenizer)
    latencies, generated, exact, passes = [], 0, 0, 0
    start = time.perf_counter()
    for s in range(0, len(examples), batch_size):
        chunk = examples[s : s + batch_size]
        prompts, params = [], []
        for ex in chunk:
            text = prefix + lms_job_prompt(ex.query, ex.tools, 0, tokenizer=tokenizer)
            prompts.append({"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)})
            if gold:
                answer = json.dumps([c.model_dump() for c in ex.answers], separators=(",", ":"), ensure_ascii=False)
                forced = tokenizer.encode(answer, add_special_tokens=False)
                params.append(
                    SamplingParams(
                        temperature=0.0,
                        max_tokens=len(forced) + 1,
                        stop_token_ids=[backend.stop_id],
                        skip_special_tokens=True,
                        extra_args={"hyfunc": {"forced": forced, "stop": backend.stop_id}},
                    )
                )
                continue
            params.append(
                SamplingParams(
                    temperature=0.0,
                    max_tokens=256,
                    # Compact JSON: without this the grammar lets whitespace run on to max_tokens.
                    structured_outputs=StructuredOutputsParams(
                        json=calls_schema(ex.tools, vl.config.max_calls), disable_any_whitespace=True
                    ),
                    skip_special_tokens=True,
                )
            )
        t0 = time.perf_counter()
        outputs = backend.llm.generate(prompts, params, use_tqdm=False)
        wall = (time.perf_counter() - t0) * 1000
        passes += max(len(out.outputs[0].token_ids) for out in outputs)  # static batch: steps = longest answer
        for ex, out in zip(chunk, outputs, strict=True):
            latencies.append(wall)
            completion = out.outputs[0]
            generated += len(completion.token_ids)
            try:
                calls = [Call(name=c["name"], arguments=c["arguments"]) for c in json.loads(completion.text)]
            except (ValueError, KeyError, TypeError):
                calls = None
            exact += calls is not None and calls_match(calls, ex.answers)
    total = time.perf_counter() - start
    return _row(len(examples), total, latencies, generated, 0, passes, exact)


def run_backends_bench(
    models_dir: Path,
    out_dir: Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    jobs: int = 64,
    batch_sizes: tuple[int, ...] = (1, 32),
    same_n: int = 400,
    modes: tuple[str, ...] = MODES,
    bfcl: tuple[str, ...] = (),
    bfcl_n: int = 20,
    repeat: int = 1,
    same_jump: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    from hyfunc.data.demo_task import generate_demo_examples

    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    hf, vl = load_cascades(models_dir, device, dtype, out_dir / "index", max(batch_sizes))
    vl.decoder.jump_forward = True  # the warm-up and the same-calls check run with jump-forward
    log(f"loaded both cascades in {time.perf_counter() - t:.0f} s")
    report: dict[str, Any] = {
        "kind": "backends",
        "machine": machine_info(device),
        "models": str(models_dir),
        "dtype": dtype,
        "lms_versions": hf.model_versions,
    }
    examples = generate_demo_examples("heldout", max(jobs, same_n, 4), 1)
    rows = []
    if jobs:
        from hyfunc.schema import CallRequest

        warm = examples[:4]
        _cascade_mode(hf, warm, 4)  # shared prefix, index, first-call costs outside the timings
        _cascade_mode(vl, warm, 4)
        _structured_mode(vl, warm, 4)
        # Every timed job's tools in both function indexes first, as in a service (its index is
        # persisted): else the first round of each cascade also embeds new tools.
        for cascade in (hf, vl):
            for s in range(0, jobs, max(batch_sizes)):
                cascade.prepare([CallRequest(query=ex.query, tools=ex.tools) for ex in examples[s : s + max(batch_sizes)]])
    for size in batch_sizes if jobs else ():
        n = jobs if size > 1 else min(jobs, 16)
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for attempt in range(repeat):  # the modes take turns, so a change in the machine's load hits them all
            for mode in modes:
                log(f"{mode}, batch {size}: {n} jobs" + (f" (round {attempt + 1}/{repeat})" if repeat > 1 else ""))
                if mode in ("vllm-structured", "vllm-gold-json"):
                    row = _structured_mode(vl, examples[:n], size, gold=mode == "vllm-gold-json")
                elif mode in ("vllm", "vllm-no-jump"):
                    vl.decoder.jump_forward = mode == "vllm"
                    row = _cascade_mode(vl, examples[:n], size)
                else:
                    row = _cascade_mode(hf, examples[:n], size)
                runs[mode].append(row)
        rows += [{"mode": mode, "batch": size, **_median_run(runs[mode])} for mode in modes]
    report["rows"] = rows
    by = {(row["mode"], row["batch"]): row for row in rows}
    big = max(batch_sizes)
    if all((m, big) in by for m in ("transformers", "vllm", "vllm-structured")):
        report["cascade_vs_structured_at_batch"] = {
            "batch": big,
            "vllm_backend": r(by[("vllm", big)]["jobs_per_s"] / by[("vllm-structured", big)]["jobs_per_s"], 2),
            "transformers_backend": r(by[("transformers", big)]["jobs_per_s"] / by[("vllm-structured", big)]["jobs_per_s"], 2),
        }
        if ("vllm-no-jump", big) in by:  # the vLLM backend as configured by default (models.vllm_jump_forward: false)
            report["cascade_vs_structured_at_batch"]["vllm_no_jump_backend"] = r(
                by[("vllm-no-jump", big)]["jobs_per_s"] / by[("vllm-structured", big)]["jobs_per_s"], 2
            )
        if ("vllm-gold-json", big) in by:
            gold = by[("vllm-gold-json", big)]["jobs_per_s"]
            report["cascade_vs_structured_at_batch"]["vllm_backend_vs_gold_json"] = r(by[("vllm", big)]["jobs_per_s"] / gold, 2)
            report["cascade_vs_structured_at_batch"]["transformers_backend_vs_gold_json"] = r(
                by[("transformers", big)]["jobs_per_s"] / gold, 2
            )
    # The same-calls checks run the vLLM backend with jump-forward unless same_jump is off.
    report["same_calls_mode"] = "vllm" if same_jump else "vllm-no-jump"
    vl.decoder.jump_forward = same_jump
    if same_n:
        report["same_calls"] = same_calls(hf, vl, examples[:same_n], big, log)
    if bfcl:
        report["same_calls_bfcl"] = {
            category: same_calls(hf, vl, sample, big, log, label=f"bfcl {category}")
            for category, sample in bfcl_sample(bfcl, bfcl_n).items()
        }
    (out_dir / "backends.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "backends.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# hyfunc bench backends",
        "",
        f"Models: `{report['models']}` ({report['dtype']}); machine: {report['machine'].get('cpu', report['machine'])}.",
    ]
    if report["rows"]:
        lines += [
            "",
            "| mode | batch | jobs | jobs/s | p50 ms | p95 ms | generated/job | injected/job | LMS passes | exact match |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for row in report["rows"]:
        rounds = row.get("jobs_per_s_rounds")
        speed = f"{row['jobs_per_s']} (rounds: {', '.join(map(str, rounds))})" if rounds else row["jobs_per_s"]
        lines.append(
            f"| {row['mode']} | {row['batch']} | {row['jobs']} | {speed} | {row['p50_ms']} | {row['p95_ms']} | "
            f"{row['generated_per_job']} | {row['injected_per_job']} | {row['lms_passes']} | {row['exact_match']} |"
        )
    ratio = report.get("cascade_vs_structured_at_batch")
    if ratio:
        no_jump = f" ({ratio['vllm_no_jump_backend']}x without jump-forward)" if "vllm_no_jump_backend" in ratio else ""
        lines += ["", f"Templated cascade vs plain vLLM structured output at batch {ratio['batch']}: "
                  f"vLLM backend {ratio['vllm_backend']}x{no_jump}, transformers backend {ratio['transformers_backend']}x (jobs/s)."]
        if "vllm_backend_vs_gold_json" in ratio:
            lines.append(f"Against the gold JSON forced token by token: vLLM backend {ratio['vllm_backend_vs_gold_json']}x, "
                         f"transformers backend {ratio['transformers_backend_vs_gold_json']}x.")
    checks = []
    if report.get("same_calls"):
        checks.append(("demo held-out", report["same_calls"]))
    checks += [(f"BFCL {category}", same) for category, same in report.get("same_calls_bfcl", {}).items()]
    mode = report.get("same_calls_mode", "vllm")
    for label, same in checks:
        covered = f" ({same['with_calls']} with calls, {same['errors']} failed)" if "with_calls" in same else ""
        lines += ["", f"Same calls, vLLM ({mode}) vs transformers backend, {label}: {same['same']}/{same['jobs']} ({same['agreement']}){covered}."]
        for d in same["differences"]:
            lines.append(f"- {d.get('id', '')} `{d['query']}`: transformers {json.dumps(d['transformers'])} / vLLM {json.dumps(d['vllm'])}")
    return "\n".join(lines) + "\n"
