"""Continuous batching, the prefix cache and token budgets on the tiny models.

- continuous batching (rows refilled as jobs finish) gives every job the same calls and token
  counts as one static batch and as running alone;
- the radix prefix cache changes what is computed, never what is decided: greedy results are
  identical with and without it, and every prompt token is either reused or computed;
- a job over its generated-token budget fails alone (the nested-array schema that, unbounded,
  decodes max_array_items items per level of depth 8), and its batch neighbours are unaffected.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
import torch
from engine_support import PING, WEATHER, Trace, recording, tool
from test_decoder import SPECS, make_job, same

from hyfunc.cascade.decoder import Budgets, DecodeJob, DecodeResult, LMSDecoder
from hyfunc.cascade.prompts import lms_job_prompt
from hyfunc.cascade.template import Generate, Program


def calls_of(result: DecodeResult) -> list[dict[str, Any]]:
    assert result.error is None, result.error
    return [c.model_dump() for c in result.calls]


def decisions_alike(a: DecodeResult, b: DecodeResult) -> None:
    """Same calls and the same decisions; what was computed vs reused may differ."""
    assert calls_of(a) == calls_of(b)
    for field in ("prompt_tokens", "injected", "generated", "forward_passes"):
        assert getattr(a.stats, field) == getattr(b.stats, field), field


def jobs(bundle, make_machine, specs=SPECS) -> list[DecodeJob]:
    return [make_job(s, bundle, make_machine)[0] for s in specs]


def test_continuous_equals_static_for_every_job(tiny_decoder, tiny_bundle, make_machine) -> None:
    static = tiny_decoder.decode(jobs(tiny_bundle, make_machine))
    for max_rows in (1, 2, 3):
        before, passes_before = tiny_decoder.steps, tiny_decoder.forward_passes
        streamed = dict(tiny_decoder.stream(jobs(tiny_bundle, make_machine), max_rows=max_rows))
        steps = tiny_decoder.steps - before
        # A step is a decode pass for running rows, a prefill pass for joining rows, or both.
        assert steps <= tiny_decoder.forward_passes - passes_before <= 2 * steps
        assert sorted(streamed) == list(range(len(SPECS)))
        for i, result in enumerate(static):
            same(streamed[i], result)  # calls and every token count, fed_tokens included
        # Rows really were refilled: later jobs start after earlier ones, never more than
        # max_rows at once, and each row's passes are contiguous from its admission.
        firsts = [streamed[i].stats.first_pass for i in range(len(SPECS))]
        assert firsts == sorted(firsts) and firsts[-1] > 0
        for p in range(steps):
            live = [r for r in streamed.values() if r.stats.first_pass <= p < r.stats.first_pass + r.stats.forward_passes]
            assert 1 <= len(live) <= max_rows
        assert steps == max(r.stats.first_pass + r.stats.forward_passes for r in streamed.values())
    # One row at a time is strictly sequential: the passes add up.
    assert sum(r.stats.forward_passes for r in static) == max(
        r.stats.first_pass + r.stats.forward_passes for r in dict(tiny_decoder.stream(jobs(tiny_bundle, make_machine), 1)).values()
    )


def test_submit_and_step_while_running(tiny_decoder, tiny_bundle, make_machine) -> None:
    """The worker-facing API: jobs submitted between steps join the running batch."""
    alone = [tiny_decoder.decode([job])[0] for job in jobs(tiny_bundle, make_machine)]
    session = tiny_decoder.continuous(max_rows=4)
    fresh = jobs(tiny_bundle, make_machine)
    out: dict[int, DecodeResult] = {}
    session.submit(0, fresh[0])
    session.submit(1, fresh[1])
    steps = 0
    while session.has_work() or len(out) < len(fresh):
        if steps < len(fresh) - 2:
            session.submit(steps + 2, fresh[steps + 2])  # one more job arrives every step
        out.update(dict(session.step()))
        steps += 1
    for i, result in enumerate(alone):
        same(out[i], result)
    assert max(r.stats.first_pass for r in out.values()) >= 2  # late arrivals joined mid-batch


def test_prefix_cache_keeps_greedy_results(tiny_bundle, machine, make_machine) -> None:
    plain = LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device, split_chunks=False)
    cached = LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device, prefix_cache_bytes=1 << 26, split_chunks=False)
    reference = plain.decode(jobs(tiny_bundle, make_machine))
    first = cached.decode(jobs(tiny_bundle, make_machine))
    second = cached.decode(jobs(tiny_bundle, make_machine))  # same prompts again: almost all reused
    streamed = dict(cached.stream(jobs(tiny_bundle, make_machine), max_rows=2))
    specs_trace = [make_job(s, tiny_bundle, make_machine) for s in SPECS]
    traced = cached.decode([job for job, _ in specs_trace])
    for i, ref in enumerate(reference):
        for other in (first[i], second[i], streamed[i], traced[i]):
            decisions_alike(other, ref)
            s = other.stats
            assert s.prompt_reused + s.prompt_computed == s.prompt_tokens
        # The second time round every prompt token before the soft-token slot is reused.
        soft_at = make_job(SPECS[i], tiny_bundle, make_machine)[0].prompt_ids.index(cached.soft_id)
        assert second[i].stats.prompt_reused == soft_at
        assert second[i].stats.prompt_computed == ref.stats.prompt_tokens - soft_at
    # Every token is fed exactly once: computed prompt + injected + generated - 1 - tail.
    for (_, trace), result in zip(specs_trace, traced, strict=True):
        s = result.stats
        assert s.fed_tokens == s.prompt_computed + s.injected + s.generated - 1 - trace.tail_injected
    assert cached.cache is not None and 0 < cached.cache.nbytes <= cached.cache.max_bytes
    assert sum(r.stats.prompt_computed for r in second) < sum(r.stats.prompt_computed for r in first)


def test_shared_schemas_are_computed_once_per_batch(tiny_bundle, machine, make_machine) -> None:
    """Jobs with the same candidates in one batch: the first computes the schemas, the others
    wait one step and prefill only their query (cache-aware admission)."""
    from test_decoder import Spec

    same_tools = [Spec(f"weather in city number {i}", [WEATHER, PING], 1, 10 + i) for i in range(4)]
    decoder = LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device, prefix_cache_bytes=1 << 26, split_chunks=False)
    plain = LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device, split_chunks=False)
    results = decoder.decode(jobs(tiny_bundle, make_machine, same_tools))
    reference = plain.decode(jobs(tiny_bundle, make_machine, same_tools))
    for r, ref in zip(results, reference, strict=True):
        decisions_alike(r, ref)
    assert results[0].stats.prompt_reused == 0 and results[0].stats.first_pass == 0
    for r in results[1:]:
        assert r.stats.first_pass == 1
        assert r.stats.prompt_reused >= 0.8 * (r.stats.prompt_tokens - 12)  # all but the query and tail


# -- budgets ------------------------------------------------------------------------------------


def nested_array_tool(depth: int):
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return tool("grid_tool", {"grid": schema}, ["grid"], "A tool whose parameter nests arrays.")


def never_close_arrays(program: Program, close_ids: set[int]) -> Program:
    """Steer a random model into the worst case: it never closes an array while it may go on."""
    send = None
    try:
        while True:
            step = program.send(send)
            if isinstance(step, Generate):
                if isinstance(step.allowed, torch.Tensor):
                    allowed = step.allowed.clone()
                    allowed[list(close_ids & set(range(allowed.numel())))] = False
                    if bool(allowed.any()):
                        step = Generate(allowed)
                else:
                    kept = [t for t in step.allowed if t not in close_ids]
                    if kept and len(kept) < len(step.allowed):
                        step = Generate(kept)
            send = yield step
    except StopIteration as stop:
        return stop.value


def close_ids_of(tokenizer) -> set[int]:
    """Every token that would close an array ("]", "]]", " ]", ...)."""
    return {t for t in range(len(tokenizer)) if tokenizer.decode([t]).lstrip().startswith("]")}


def hostile_job(bundle, machine, seed: int = 0) -> DecodeJob:
    grid = nested_array_tool(8)
    tokenizer = bundle.lms_tokenizer
    close_ids = close_ids_of(tokenizer)
    soft = torch.randn(1, bundle.lms_dim, generator=torch.Generator().manual_seed(seed))
    prompt = tokenizer.encode(lms_job_prompt("fill the grid", [grid], 1), add_special_tokens=False)
    return DecodeJob(prompt, soft, never_close_arrays(machine.program([grid]), close_ids))


def test_job_over_its_token_budget_fails_alone(tiny_bundle, make_machine) -> None:
    machine = make_machine(max_array_items=8, max_number_tokens=2, max_calls=1)
    budget = 300  # unbounded, this job would decode 8**8 items
    decoder = LMSDecoder(
        tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device,
        budgets=Budgets(max_job_tokens=budget, max_call_tokens=None), split_chunks=False,
    )
    unbounded = LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device,
                           budgets=Budgets(None, None), split_chunks=False)
    neighbours = SPECS[:3]
    alone = [unbounded.decode([job])[0] for job in jobs(tiny_bundle, make_machine, neighbours)]
    batch = jobs(tiny_bundle, make_machine, neighbours)
    batch.insert(1, hostile_job(tiny_bundle, machine))
    results = decoder.decode(batch)
    bad = results.pop(1)
    assert bad.error == f"generated-token budget cascade.max_job_tokens={budget} exceeded"
    assert bad.calls == [] and bad.stats.generated == budget
    for r, a in zip(results, alone, strict=True):
        same(r, a)
    # The same in a continuous session: the hostile row frees its slot and the rest go on.
    batch = jobs(tiny_bundle, make_machine, neighbours)
    batch.insert(0, hostile_job(tiny_bundle, machine))
    streamed = dict(decoder.stream(batch, max_rows=2))
    assert streamed[0].error and "max_job_tokens" in streamed[0].error
    for i, a in enumerate(alone, start=1):
        same(streamed[i], a)


def test_per_call_budget(tiny_bundle, make_machine) -> None:
    machine = make_machine(max_array_items=8, max_number_tokens=2, max_calls=1)
    decoder = LMSDecoder(
        tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device, budgets=Budgets(max_call_tokens=40), split_chunks=False
    )
    (result,) = decoder.decode([hostile_job(tiny_bundle, machine)])
    assert result.error == "generated-token budget cascade.max_call_tokens=40 exceeded in call 1"
    assert result.stats.generated == 40


def test_recorded_programs_see_only_allowed_tokens(tiny_decoder, tiny_bundle, make_machine) -> None:
    """The sampler's picks always satisfy the step, also for rows that joined mid-batch."""
    traces: list[Trace] = []

    def wrapped() -> Generator[DecodeJob, None, None]:
        for spec in SPECS:
            job, _ = make_job(spec, tiny_bundle, make_machine)
            trace = Trace()
            traces.append(trace)
            yield DecodeJob(job.prompt_ids, job.soft_embeddings, recording(job.program, trace))

    results = dict(tiny_decoder.stream(wrapped(), max_rows=2))
    for i, trace in enumerate(traces):
        assert trace.calls is not None and [c.model_dump() for c in trace.calls] == calls_of(results[i])


@pytest.mark.slow
def test_bench_rows_for_continuous_batching_and_prefix_reuse(cascade) -> None:
    """The bench rows run end to end on the tiny models (numbers are measured by `hyfunc bench`)."""
    from engine_support import ALL_TOOLS, CONVERT, EMAIL, THERMOSTAT

    from hyfunc.bench.throughput import bench_continuous, bench_prefix
    from hyfunc.bench.workload import BenchInput

    items = [
        BenchInput("a", "demo", "weather in Paris and ping", [WEATHER, PING], []),
        BenchInput("b", "demo", "email bob about lunch", [EMAIL, PING], []),
        BenchInput("c", "demo", "hall 21.5 then convert 3 usd", [THERMOSTAT, CONVERT], []),
        BenchInput("d", "demo", "everything", ALL_TOOLS, []),
    ]
    cont = bench_continuous(cascade, items, jobs=8, rows=2, free=True)
    assert cont["static"]["lms_passes"] > 0 and cont["continuous"]["lms_passes"] > 0
    assert cont["continuous"]["mean_rows_per_pass"] >= cont["static"]["mean_rows_per_pass"]
    assert cascade.config.continuous is True and cascade.config.batch_size == 16  # restored
    prefix = bench_prefix(cascade, jobs=20, rows=4)
    today, served = prefix["no cache (today)"], prefix["cache, canonical order (served)"]
    assert today["reused_per_job"] == 0 and today["computed_per_job"] == today["prompt_tokens_per_job"]
    assert served["reused_per_job"] > 0
    assert served["computed_per_job"] + served["reused_per_job"] == pytest.approx(served["prompt_tokens_per_job"], abs=0.2)
    assert prefix["computed_over_today"] < 1


def test_runner_matches_a_plain_forward(tiny_bundle, tiny_decoder) -> None:
    """The runner alone: rows added from a prefix KV, prefilled apart and merged into a running
    batch, ragged appends, dropped rows — each row's hidden state equals one plain forward over
    its whole token sequence, and row_kv returns the KV the model computed for its tokens."""
    from hyfunc.cascade.runner import TransformersRunner

    model = tiny_bundle.lms
    prefix = [5, 6, 7, 8]
    seqs = {"a": prefix + [11, 12, 13], "b": prefix + [21], "c": prefix + [31, 32, 33, 34, 35]}

    def plain(ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]

    runner = TransformersRunner(model, tiny_decoder.pad_id, tiny_decoder.soft_id, tiny_bundle.device)
    start = runner.encode_prefix(prefix)
    hidden = runner.prefill([start, start], [seqs["a"][4:], seqs["b"][4:]], [None, None])
    assert torch.allclose(hidden[0], plain(seqs["a"]), atol=1e-5)
    assert torch.allclose(hidden[1], plain(seqs["b"]), atol=1e-5)
    seqs["a"].append(14)
    seqs["b"] += [22, 23]
    hidden = runner.forward([[14], [22, 23]], [None, None])  # ragged: one row padded
    assert torch.allclose(hidden[1], plain(seqs["b"]), atol=1e-5)
    joined = runner.prefill([start], [seqs["c"][4:]], [None])  # joins the running batch
    assert torch.allclose(joined[0], plain(seqs["c"]), atol=1e-5)
    runner.keep_rows([0, 2])  # "b" leaves
    seqs["a"].append(15)
    seqs["c"].append(36)
    hidden = runner.forward([[15], [36]], [None, None])
    assert torch.allclose(hidden[0], plain(seqs["a"]), atol=1e-5)
    assert torch.allclose(hidden[1], plain(seqs["c"]), atol=1e-5)
    # The KV of row "c"'s tokens 4..9 as a fresh single-row run computes it.
    kv = runner.row_kv(1, 4, 9)
    alone = TransformersRunner(model, tiny_decoder.pad_id, tiny_decoder.soft_id, tiny_bundle.device)
    full = alone.encode_prefix(seqs["c"][:9])
    for (k, v), (fk, fv) in zip(kv, full, strict=True):
        assert torch.allclose(k, fk[:, 4:9], atol=1e-5) and torch.allclose(v, fv[:, 4:9], atol=1e-5)


def test_empty_stream_runs_nothing(tiny_bundle, machine) -> None:
    decoder = LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device, split_chunks=False)
    assert list(decoder.stream(iter([]), max_rows=4)) == []
    assert decoder.prefix_passes == 0 and decoder.forward_passes == 0 and decoder.steps == 0
