"""`hyfunc bench constraints`: the cost of constraining decoding, per vocabulary.

For each vocabulary (the shipped LMS's, SmolLM2's 49k, Qwen's 151k, any given with
``--tokenizer NAME=DIR``) and one workload (demo held-out jobs: their candidate tools, query
and gold calls), in one run:

- **tables**: compiling the per-vocabulary tables (once per process);
- **per-job setup**: `TemplateMachine.program(...)` up to its first step, copy mode on (the
  copy-span index is built from the query), against the baseline it replaced — scanning the
  whole vocabulary for the tokens that occur in the query;
- **per decision**: template-machine time per generated token, driving inference programs
  with the tokens teacher mode records for the gold calls;
- **sampler**: `BatchSampler.pick` on the workload's real steps at batch 1 and 32 with an LM
  head of the vocabulary's size, against the per-row loop it replaced (full logits, a mask
  copy and a host sync per row) and against an unconstrained full-head argmax;
- **libraries**: llguidance and xgrammar on the same jobs (grammar: the candidates' call
  JSON schema; tokens: the gold calls' JSON) — per-job grammar compile, mask time per step at
  batch 1 and 32, steps per job — and whether their forced (fast-forward) tokens are the
  tokens training would write (teacher mode needs the same token boundaries).
- **share**: with the shipped models, template machine + sampler time as a share of LMS
  decode time at batch 32 (the decoder's own run, timed from inside).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import torch

from hyfunc.bench.workload import BenchInput

BATCHES = (1, 32)
HEAD_WIDTH = 576  # SmolLM2-135M's hidden size: a realistic LM head for the sampler timings


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 4)


def _best(fn: Callable[[], Any], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _p50(values: list[float]) -> float:
    return _ms(statistics.median(values)) if values else 0.0


# -- the workload --------------------------------------------------------------------------------


def bench_vocabularies(demo_dir: Path | None, extra: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Tokenizers to measure, and the ones skipped with the reason."""
    from transformers import AutoTokenizer

    from hyfunc.models.cache import base_dir, read_marker

    found: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    if demo_dir is not None:
        found["shipped LMS"] = AutoTokenizer.from_pretrained(str(demo_dir / "lms"))
    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        directory = base_dir(name)
        if read_marker(directory) is not None:
            found[name] = AutoTokenizer.from_pretrained(str(directory))
        elif name not in extra:
            skipped[name] = f"not pulled (`hyfunc models pull {name}`, or --tokenizer {name}=DIR)"
    for name, directory in extra.items():
        found[name] = AutoTokenizer.from_pretrained(directory)
    try:
        from hyfunc.bench.qwen_tokenizer import load_qwen_tokenizer

        found["qwen (151k)"] = load_qwen_tokenizer()
    except Exception as err:  # noqa: BLE001 - a missing optional tokenizer skips its rows
        skipped["qwen (151k)"] = f"{type(err).__name__}: {err}"
    return found, skipped


def workload(n: int) -> list[BenchInput]:
    from hyfunc.bench.workload import demo_inputs

    return [item for item in demo_inputs(2 * n) if item.gold][:n]


# -- our tables ----------------------------------------------------------------------------------


def _old_vocabulary_scan(token_bytes: list[bytes | None], query: str) -> dict[int, bytes]:
    """The baseline per-job setup: every token of the vocabulary searched for in the query."""
    escaped = json.dumps(query, ensure_ascii=False)[1:-1].encode("utf-8")
    return {tid: data for tid, data in enumerate(token_bytes) if data and data in escaped}


def _drive(program: Generator, picks: list[int], on_step: Callable[[Any], None] | None = None) -> tuple[float, int]:
    """Run a program picking ``picks`` in order; seconds spent inside the program and steps."""
    from hyfunc.cascade.template import Generate

    queue = list(picks)
    send = None
    spent = 0.0
    steps = 0
    try:
        while True:
            start = time.perf_counter()
            step = program.send(send)
            spent += time.perf_counter() - start
            send = None
            if isinstance(step, Generate):
                if on_step is not None:
                    on_step(step)
                send = queue.pop(0)
                steps += 1
    except StopIteration:
        pass
    return spent, steps


def measure_tables(tokenizer: Any, items: list[BenchInput]) -> dict[str, Any]:
    from hyfunc.cascade.constraints import CompiledVocab, compile_vocab
    from hyfunc.cascade.template import MachineLimits, TemplateMachine
    from hyfunc.cascade.vocab import VocabConstraints

    start = time.perf_counter()
    CompiledVocab(VocabConstraints.build(tokenizer))
    cold = time.perf_counter() - start
    compile_vocab(tokenizer)
    start = time.perf_counter()
    machine = TemplateMachine(tokenizer, MachineLimits(copy_values=True))
    warm = time.perf_counter() - start

    setup, baseline, decision, steps_seen = [], [], 0.0, 0
    generate_steps: list[Any] = []
    for item in items:
        # Best of 3 for both: on a shared machine the minimum is the cost, the rest is waiting.
        setup.append(_best(lambda item=item: next(machine.program(item.tools, source=item.query))))
        baseline.append(_best(lambda item=item: _old_vocabulary_scan(machine.vocab.token_bytes, item.query)))
        record = machine.teacher(item.tools, item.gold, source=item.query)
        picks = [t for t, g in zip(record.ids, record.generated, strict=True) if g]
        spent, steps = _drive(machine.program(item.tools, source=item.query), picks, generate_steps.append)
        decision += spent
        steps_seen += steps
    return {
        "vocab": len(tokenizer),
        "tables_build_s": round(cold, 2),
        "machine_again_ms": _ms(warm),
        "setup_p50_ms": _p50(setup),
        "setup_p95_ms": _ms(sorted(setup)[int(0.95 * (len(setup) - 1))]),
        "baseline_vocab_scan_p50_ms": _p50(baseline),
        "setup_speedup": round(statistics.median(baseline) / max(statistics.median(setup), 1e-9), 1),
        "machine_ms_per_decision": _ms(decision / max(steps_seen, 1)),
        "decisions_per_job": round(steps_seen / max(len(items), 1), 1),
        "_steps": generate_steps,
    }


# -- the sampler ---------------------------------------------------------------------------------


def _old_pick(head: torch.nn.Module, hidden: torch.Tensor, steps: list[Any], vocab: int) -> list[int]:
    """The baseline: the decoder's old per-row loop (full logits, a per-row mask, one sync each)."""
    logits = head(hidden).float()
    out = []
    for row, step in enumerate(steps):
        if isinstance(step.allowed, torch.Tensor):
            masked = logits[row].masked_fill(~step.allowed[:vocab].to(logits.device), float("-inf"))
        else:
            allowed = torch.tensor([t for t in step.allowed if t < vocab])
            masked = torch.full_like(logits[row], float("-inf"))
            masked[allowed] = logits[row][allowed]
        out.append(int(torch.argmax(masked).item()))
    return out


def measure_sampler(vocab: int, steps: list[Any], repeats: int = 5) -> dict[str, Any]:
    from hyfunc.cascade.sampler import BatchSampler

    torch.manual_seed(0)
    head = torch.nn.Linear(HEAD_WIDTH, vocab, bias=False)
    sampler = BatchSampler(head, vocab)
    result: dict[str, Any] = {}
    with torch.inference_mode():
        for batch in BATCHES:
            groups = [steps[i : i + batch] for i in range(0, len(steps) - batch + 1, batch)][: max(1, 64 // batch)]
            if not groups:
                result[f"batch {batch}"] = {"skipped": f"only {len(steps)} steps in the workload"}
                continue
            timings: dict[str, list[float]] = {"sampler": [], "old per-row": [], "full head argmax": []}
            for group in groups:
                hidden = torch.randn(len(group), HEAD_WIDTH)
                for _ in range(repeats):
                    for label, fn in (
                        ("sampler", lambda h=hidden, g=group: sampler.pick(h, g)),
                        ("old per-row", lambda h=hidden, g=group: _old_pick(head, h, g, vocab)),
                        ("full head argmax", lambda h=hidden: head(h).argmax(-1).tolist()),
                    ):
                        start = time.perf_counter()
                        fn()
                        timings[label].append(time.perf_counter() - start)
            row = {f"{label} ms": _p50(values) for label, values in timings.items()}
            row["old / sampler"] = round(statistics.median(timings["old per-row"]) / statistics.median(timings["sampler"]), 2)
            result[f"batch {batch}"] = row
    return result


# -- the libraries ---------------------------------------------------------------------------------


def _call_schema(tools: list[Any]) -> dict[str, Any]:
    """The answer as JSON: a list of calls, each one of the candidates with its arguments."""
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.function.parameters.model_dump(exclude_none=True)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return {"type": "array", "items": {"anyOf": variants}, "minItems": 1}


def _gold_json(item: BenchInput) -> str:
    return json.dumps([{"name": c.name, "arguments": c.arguments} for c in item.gold], ensure_ascii=False)


class _Library:
    name = ""

    def compile(self, schema: dict[str, Any]) -> Any: ...
    def matcher(self, compiled: Any) -> Any: ...
    def fill(self, matchers: list[Any], bitmask: torch.Tensor) -> None: ...
    def accept(self, matcher: Any, token: int) -> bool: ...
    def forced(self, matcher: Any, tokenizer: Any) -> list[int]: ...


class _LLGuidance(_Library):
    name = "llguidance"

    def __init__(self, tokenizer: Any):
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.ll = llguidance
        self.llt = llguidance.torch
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer)
        self.executor = llguidance.LLExecutor()
        self.vocab = self.tokenizer.vocab_size

    def compile(self, schema):
        grammar = self.ll.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults={"whitespace_flexible": True})
        return grammar

    def matcher(self, compiled):
        matcher = self.ll.LLMatcher(self.tokenizer, compiled)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def allocate(self, rows):
        return self.llt.allocate_token_bitmask(rows, self.vocab)

    def fill(self, matchers, bitmask):
        if len(matchers) == 1:
            self.llt.fill_next_token_bitmask(matchers[0], bitmask, 0)
        else:
            self.llt.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(matchers)], bitmask)

    def accept(self, matcher, token):
        return bool(matcher.consume_token(token))

    def forced(self, matcher, tokenizer):
        return list(matcher.compute_ff_tokens())


class _XGrammar(_Library):
    name = "xgrammar"

    def __init__(self, tokenizer: Any):
        import xgrammar

        self.xgr = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        self.vocab = len(tokenizer)
        self.batch = xgrammar.BatchGrammarMatcher()

    def compile(self, schema):
        # A fresh compiler per job: its cache would turn the per-job cost into a lookup.
        compiler = self.xgr.GrammarCompiler(self.info, max_threads=2)
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=True, any_order=True)

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def allocate(self, rows):
        return self.xgr.allocate_token_bitmask(rows, self.vocab)

    def fill(self, matchers, bitmask):
        if len(matchers) == 1:
            matchers[0].fill_next_token_bitmask(bitmask, 0)
        else:
            self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def accept(self, matcher, token):
        return bool(matcher.accept_token(token))

    def forced(self, matcher, tokenizer):
        text = matcher.find_jump_forward_string()
        return tokenizer.encode(text, add_special_tokens=False) if text else []


LIBRARIES: tuple[type[_Library], ...] = (_LLGuidance, _XGrammar)


def measure_library(make: Callable[[Any], _Library], tokenizer: Any, items: list[BenchInput]) -> dict[str, Any]:
    lib = make(tokenizer)
    compile_s, jobs = [], []
    for item in items:
        schema = _call_schema(item.tools)
        compile_s.append(_best(lambda schema=schema: lib.matcher(lib.compile(schema))))
        jobs.append((lib.compile(schema), tokenizer.encode(_gold_json(item), add_special_tokens=False)))
    result: dict[str, Any] = {"setup_p50_ms": _p50(compile_s), "steps_per_job": round(statistics.mean(len(t) for _, t in jobs), 1)}
    # Forced tokens against the gold tokenization (what teacher-mode training would write).
    forced_total = forced_agree = rejected = 0
    for compiled, tokens in jobs:
        matcher = lib.matcher(compiled)
        pos = 0
        while pos < len(tokens):
            ff = lib.forced(matcher, tokenizer)
            if ff:
                forced_total += 1
                forced_agree += tokens[pos : pos + len(ff)] == ff
            if not lib.accept(matcher, tokens[pos]):
                rejected += 1
                break
            pos += 1
    result["gold_rejected_jobs"] = rejected
    result["forced_runs_equal_to_training_tokens"] = f"{forced_agree}/{forced_total}"
    for batch in BATCHES:
        spent, steps = 0.0, 0
        bitmask = lib.allocate(batch)
        for first in range(0, len(jobs) - batch + 1, batch):
            group = jobs[first : first + batch]
            matchers = [lib.matcher(compiled) for compiled, _ in group]
            length = min(len(tokens) for _, tokens in group)
            for pos in range(length):
                start = time.perf_counter()
                lib.fill(matchers, bitmask)
                spent += time.perf_counter() - start
                steps += 1
                for matcher, (_, tokens) in zip(matchers, group, strict=True):
                    lib.accept(matcher, tokens[pos])
            if batch > 1:
                break  # one batch of 32 is enough to time
        result[f"mask_ms_per_step_batch{batch}"] = _ms(spent / max(steps, 1))
    return result


# -- the share of decode time ----------------------------------------------------------------------


def measure_share(demo_dir: Path, items: list[BenchInput], batch: int = 32) -> dict[str, Any]:
    """Template machine + sampler time over LMS decode time, one batch of the shipped models."""
    from hyfunc.bench.runs import load_cascade
    from hyfunc.cascade.decoder import DecodeJob

    cascade = load_cascade(demo_dir, "cpu", "float32")
    bundle = cascade.bundle
    machine_s = [0.0]

    def timed(program: Generator) -> Generator:
        send = None
        while True:
            start = time.perf_counter()
            try:
                step = program.send(send)
            except StopIteration as stop:
                machine_s[0] += time.perf_counter() - start
                return stop.value
            machine_s[0] += time.perf_counter() - start
            send = yield step

    sampler = cascade.decoder.sampler
    sampler_s = [0.0]
    original = sampler.pick

    def pick(hidden, steps):
        start = time.perf_counter()
        out = original(hidden, steps)
        sampler_s[0] += time.perf_counter() - start
        return out

    group = (items * (batch // max(len(items), 1) + 2))[: batch + 1]
    with torch.inference_mode():
        soft = bundle.projector(
            cascade.intent.soft_tokens([i.query for i in group]).soft_tokens.to(bundle.device, bundle.dtype)
        )
    jobs = []
    for i, item in enumerate(group):
        ids = cascade.job_prompt_ids(item.query, item.tools, soft[i].shape[0])
        jobs.append(DecodeJob(ids, soft[i], timed(cascade.machine.program(item.tools, source=item.query))))
    sampler.pick = pick  # type: ignore[method-assign]
    try:
        with torch.inference_mode():
            cascade.decoder.decode(jobs[:1])  # the shared prefix, once per process, is not timed
            machine_s[0] = sampler_s[0] = 0.0
            start = time.perf_counter()
            cascade.decoder.decode(jobs[1:])
            wall = time.perf_counter() - start
    finally:
        del sampler.pick
    return {
        "batch": batch,
        "vocab": len(bundle.lms_tokenizer),
        "lms_wall_ms": _ms(wall),
        "machine_ms": _ms(machine_s[0]),
        "sampler_ms": _ms(sampler_s[0]),
        "share": round((machine_s[0] + sampler_s[0]) / max(wall, 1e-9), 3),
    }


# -- the benchmark ---------------------------------------------------------------------------------


def bench_constraints(demo_dir: Path | None, n: int = 32, extra: dict[str, str] | None = None, log=print) -> dict[str, Any]:
    items = workload(n)
    vocabularies, skipped = bench_vocabularies(demo_dir, extra or {})
    result: dict[str, Any] = {"jobs": len(items), "vocabularies": {}, "skipped": skipped}
    for name, tokenizer in vocabularies.items():
        log(f"constraints: {name} ({len(tokenizer)} tokens)")
        entry: dict[str, Any] = {}
        tables = measure_tables(tokenizer, items)
        steps = tables.pop("_steps")
        entry["tables"] = tables
        entry["sampler"] = measure_sampler(len(tokenizer), steps)
        for make in LIBRARIES:
            try:
                entry[make.name] = measure_library(make, tokenizer, items)
            except Exception as err:  # noqa: BLE001 - a library that cannot run is reported, not fatal
                entry[make.name] = {"error": f"{type(err).__name__}: {err}"[:300]}
        result["vocabularies"][name] = entry
    if demo_dir is not None:
        log("constraints: share of LMS time, shipped models, batch 32")
        result["share"] = measure_share(demo_dir, items)
    return result


def markdown_section(result: dict[str, Any]) -> list[str]:
    out = ["## Constraints: compiled tables, batched sampler, libraries", ""]
    out.append(f"Workload: {result['jobs']} demo held-out jobs (copy mode on). Skipped: {result.get('skipped') or 'none'}.")
    out.append("")
    out.append("| vocabulary | tokens | tables build s | per-job setup p50 ms | baseline vocab scan ms | speedup | "
               "machine ms / decision | decisions / job | sampler b1 ms (old) | sampler b32 ms (old) | full-head argmax b32 ms |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, entry in result["vocabularies"].items():
        t, s = entry["tables"], entry["sampler"]
        b1, b32 = s.get("batch 1", {}), s.get("batch 32", {})
        out.append(f"| {name} | {t['vocab']} | {t['tables_build_s']} | {t['setup_p50_ms']} | {t['baseline_vocab_scan_p50_ms']} | "
                   f"{t['setup_speedup']}× | {t['machine_ms_per_decision']} | {t['decisions_per_job']} | "
                   f"{b1.get('sampler ms')} ({b1.get('old per-row ms')}) | {b32.get('sampler ms')} ({b32.get('old per-row ms')}) | "
                   f"{b32.get('full head argmax ms')} |")
    out += ["", "| vocabulary | constraints | per-job setup p50 ms | mask ms / step b1 | mask ms / step b32 | steps / job | "
            "setup + steps × mask, ms / job | forced runs = training tokens | gold rejected |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in result["vocabularies"].items():
        t = entry["tables"]
        per_job = round(t["setup_p50_ms"] + t["decisions_per_job"] * t["machine_ms_per_decision"], 2)
        out.append(f"| {name} | hyfunc tables | {t['setup_p50_ms']} | {t['machine_ms_per_decision']} | "
                   f"{round(32 * t['machine_ms_per_decision'], 3)} (32 rows, serial) | {t['decisions_per_job']} | {per_job} | "
                   "all (same program) | 0 |")
        for lib in ("llguidance", "xgrammar"):
            r = entry.get(lib)
            if r is None:  # not measured in this run
                continue
            if "error" in r:
                out.append(f"| {name} | {lib} | error: {r['error'][:80]} | | | | | | |")
                continue
            per_job = round(r["setup_p50_ms"] + r["steps_per_job"] * r["mask_ms_per_step_batch1"], 2)
            out.append(f"| {name} | {lib} | {r.get('setup_p50_ms')} | {r.get('mask_ms_per_step_batch1')} | "
                       f"{r.get('mask_ms_per_step_batch32')} | {r.get('steps_per_job')} | {per_job} | "
                       f"{r.get('forced_runs_equal_to_training_tokens')} | {r.get('gold_rejected_jobs')} |")
    if "share" in result:
        sh = result["share"]
        out += ["", f"Shipped models, one batch of {sh['batch']}: template machine {sh['machine_ms']} ms + sampler "
                f"{sh['sampler_ms']} ms of {sh['lms_wall_ms']} ms LMS decoder wall time → share {sh['share']} (target ≤ 0.10)."]
    out.append("")
    return out
