"""Per-call latency: LML-only and LMS-only full-call baselines against the cascade.

Same process, same inputs, batch size 1, each input once per row after a warm-up pass (the
warm-up also fills the function index, so timed cascade calls make exactly one LML pass).
Rows on the random-init bench models run in forced mode (gold tokens; see baselines.py);
accuracy is reported only for trained models (the cascade on the demo models, free decoding).
"""

from __future__ import annotations

from typing import Any

from hyfunc.bench.baselines import FullCallBaseline
from hyfunc.bench.runs import run_cascade_forced, run_cascade_free
from hyfunc.bench.stats import mean, percentile, r
from hyfunc.bench.workload import BenchInput, count_parameters


def _row(name: str, mode: str, model: str, params: int | None, ms: list[float], **counts: Any) -> dict[str, Any]:
    return {
        "row": name,
        "mode": mode,
        "model": model,
        "params": params,
        "n": len(ms),
        "p50_ms": r(percentile(ms, 50)),
        "p95_ms": r(percentile(ms, 95)),
        "mean_ms": r(mean(ms)),
        **{k: (r(v, 3) if isinstance(v, float) else v) for k, v in counts.items()},
    }


def bench_latency(cascade, inputs: list[BenchInput], demo_cascade=None, demo_items: list[BenchInput] | None = None) -> dict[str, Any]:
    bundle = cascade.bundle
    lml_params = count_parameters(bundle.intent_model)
    lms_params = count_parameters(bundle.lms)
    lml = FullCallBaseline(bundle.intent_model, bundle.intent_tokenizer, bundle.device, "LML")
    lms = FullCallBaseline(bundle.lms, bundle.lms_tokenizer, bundle.device, "LMS")
    forced_mode = "forced (gold tokens, random-init)"

    # Warm-up: one of each, and every input's tools into the function index.
    run_cascade_forced(cascade, inputs)
    lml.run(inputs[0].query, inputs[0].tools, inputs[0].gold)
    lms.run(inputs[0].query, inputs[0].tools, inputs[0].gold)

    rows = []
    for name, baseline, params, passes_key in (("LML only (full call)", lml, lml_params, "lml_passes"),
                                               ("LMS only (full call)", lms, lms_params, "lms_passes")):
        results = [baseline.run(item.query, item.tools, item.gold) for item in inputs]
        other = "lms_passes" if passes_key == "lml_passes" else "lml_passes"
        rows.append(_row(
            name, forced_mode, "intent (LML)" if baseline is lml else "lms (LMS)", params, [x.ms for x in results],
            **{passes_key: mean([x.forward_passes for x in results]), other: 0.0},
            prefilled=mean([x.prompt_tokens for x in results]),
            generated=mean([x.generated for x in results]),
            injected=0.0,
            accuracy=None,
        ))

    batches = [run_cascade_forced(cascade, [item]) for item in inputs]
    rows.append(_row(
        "cascade", forced_mode, "LML pass + retriever + LMS (templated)", lml_params + lms_params,
        [b.ms for b in batches],
        lml_passes=mean([b.lml_passes for b in batches]),
        lms_passes=mean([b.rows[0].stats.forward_passes for b in batches]),
        prefilled=mean([b.rows[0].lml_prompt + b.rows[0].stats.prompt_tokens for b in batches]),
        generated=mean([b.rows[0].stats.generated for b in batches]),
        injected=mean([b.rows[0].stats.injected for b in batches]),
        accuracy=None,
        errors=sum(1 for b in batches if b.rows[0].error),
        gold_swapped_in=sum(b.swapped for b in batches),
    ))

    if demo_cascade is not None and demo_items:
        from hyfunc.eval.scoring import calls_match

        run_cascade_free(demo_cascade, demo_items[:4])  # warm-up and index fill
        run_cascade_free(demo_cascade, demo_items)
        timed = [run_cascade_free(demo_cascade, [item]) for item in demo_items]
        results = [res[0] for _, res in timed]
        correct = [not res.error and calls_match(res.calls, item.gold) for res, item in zip(results, demo_items, strict=True)]
        rows.append(_row(
            "cascade (demo models)", "free (trained)", str(demo_cascade.bundle.directory),
            count_parameters(demo_cascade.bundle.intent_model) + count_parameters(demo_cascade.bundle.lms),
            [ms for ms, _ in timed],
            lml_passes=mean([res.forward_passes.lml for res in results]),
            lms_passes=mean([res.forward_passes.lms for res in results]),
            prefilled=mean([res.tokens.lml_prompt + res.tokens.lms_prompt for res in results]),
            generated=mean([res.tokens.generated for res in results]),
            injected=mean([res.tokens.injected for res in results]),
            accuracy=r(mean([float(c) for c in correct]), 4),
        ))

    lml_p50 = rows[0]["p50_ms"]
    cascade_p50 = rows[2]["p50_ms"]
    return {
        "rows": rows,
        "param_ratio_lml_lms": r(lml_params / lms_params, 2),
        "inputs": {c: sum(1 for i in inputs if i.category == c) for c in dict.fromkeys(i.category for i in inputs)},
        "cascade_over_lml_p50": r(cascade_p50 / lml_p50, 3) if lml_p50 else None,
        "target_cascade_over_lml_p50": 0.25,
        "lml_passes_per_job": rows[2]["lml_passes"],
    }
