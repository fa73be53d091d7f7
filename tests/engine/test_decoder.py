"""The batched LMS decoder: greedy results do not depend on batching, and every token is run
through the model exactly once (no re-prefill after injections, shared prefix computed once).

Jobs are driven directly (LMSDecoder.decode) so one batch can mix candidate sets, query
lengths and call counts: the call count of a random-init model is steered with machines of
different ``max_calls`` (the decoder runs whatever program each job brings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from engine_support import (
    ALL_TOOLS,
    CONVERT,
    EMAIL,
    FLIGHTS,
    PING,
    THERMOSTAT,
    WEATHER,
    Trace,
    allowed_ids,
    recording,
)

from hyfunc.cascade.decoder import Budgets, DecodeJob, DecodeResult, LMSDecoder
from hyfunc.cascade.prompts import lms_job_prompt
from hyfunc.cascade.template import CALL_NEXT, END_OF_ANSWER, Generate, Program
from hyfunc.schema import Tool


@dataclass
class Spec:
    query: str
    candidates: list[Tool]
    max_calls: int
    seed: int
    min_calls: int = 1


LIMITS = {"max_string_tokens": 4, "max_array_items": 2, "max_number_tokens": 4}


SPECS = [
    Spec("weather in Paris", [WEATHER], 1, 0),
    Spec("email bob and alice about the quarterly report, mark it urgent please, " * 3, [EMAIL, PING], 2, 1, 2),
    Spec("set the hall to 21.5", [THERMOSTAT, WEATHER, CONVERT], 4, 2),
    Spec("flights BOS to DEN", [FLIGHTS], 3, 3),
    Spec("ping", [PING], 3, 4, 3),  # ends at max_calls: the machine injects the end itself
    Spec("convert 250 usd to eur and also check the weather in Rome and ping the server", ALL_TOOLS, 4, 5, 2),
    Spec("x", [PING, CONVERT], 1, 6),
]


def at_least_calls(program: Program, calls: int, next_id: int, end_id: int) -> Program:
    """Steer a random model's call count: until ``calls`` calls are written, the another-call-or-end
    decision allows only "another call". It is still a generated decision (one pass, one token)."""
    written = 0
    send = None
    try:
        while True:
            step = program.send(send)
            if isinstance(step, Generate) and end_id in allowed_ids(step):
                written += 1
                if written < calls:
                    step = Generate([next_id])
            send = yield step
    except StopIteration as stop:
        return stop.value


@pytest.fixture(scope="module")
def decoder(tiny_bundle, machine) -> LMSDecoder:
    return LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device, split_chunks=False)


def make_job(spec: Spec, bundle, make_machine) -> tuple[DecodeJob, Trace]:
    """A fresh job (programs are single-use generators) with a trace of everything it emits."""
    tokenizer = bundle.lms_tokenizer
    soft = torch.randn(1, bundle.lms_dim, generator=torch.Generator().manual_seed(spec.seed))
    prompt = tokenizer.encode(lms_job_prompt(spec.query, spec.candidates, 1), add_special_tokens=False)
    trace = Trace()
    machine = make_machine(max_calls=spec.max_calls, **LIMITS)
    program = machine.program(spec.candidates)
    if spec.min_calls > 1:
        next_id = machine.encode(CALL_NEXT)[0]
        program = at_least_calls(program, spec.min_calls, next_id, machine.encode(END_OF_ANSWER)[0])
    return DecodeJob(prompt, soft, recording(program, trace)), trace


def same(a: DecodeResult, b: DecodeResult) -> None:
    assert a.error is None and b.error is None
    assert [c.model_dump() for c in a.calls] == [c.model_dump() for c in b.calls]
    for field in ("prompt_tokens", "injected", "generated", "fed_tokens", "forward_passes"):
        assert getattr(a.stats, field) == getattr(b.stats, field), field


def test_batched_equals_one_at_a_time(decoder, tiny_bundle, make_machine) -> None:
    batch = [make_job(s, tiny_bundle, make_machine) for s in SPECS]
    batched = decoder.decode([job for job, _ in batch])
    alone = [decoder.decode([make_job(s, tiny_bundle, make_machine)[0]])[0] for s in SPECS]
    for b, a in zip(batched, alone, strict=True):
        same(b, a)
    # The batch really is mixed: several call counts, prompt lengths and decision counts.
    assert len({len(r.calls) for r in batched}) >= 3, [len(r.calls) for r in batched]
    assert len({r.stats.prompt_tokens for r in batched}) == len(SPECS)
    assert len({r.stats.generated for r in batched}) >= 4
    # A different batch order gives the same rows too (row position must not matter).
    reordered = [make_job(s, tiny_bundle, make_machine) for s in reversed(SPECS)]
    for r, a in zip(decoder.decode([job for job, _ in reordered]), reversed(alone), strict=True):
        same(r, a)


def test_every_token_is_fed_exactly_once(decoder, tiny_bundle, make_machine) -> None:
    """Per row: tokens run through the LMS == prompt + injected + generated - 1 - tail.

    Why "- 1": each generated token is fed back on the next pass, because the next decision needs
    the model to have read it, except the last one: after the final decision (the end-of-answer
    choice) nothing reads another logit, so feeding it would be a wasted pass.
    Why "- tail": when the machine itself ends the answer (max_calls reached) it injects the
    closing "</tool_call><|im_end|>" after the last decision; nothing reads those either. Rows that
    end on the model's own stop decision have tail == 0, so there the count is exactly
    prompt + injected + generated - 1.
    Nothing is ever counted twice, so nothing was re-prefilled after an injection. The shared
    system-prompt prefix is not in fed_tokens: its KV is computed once per process.
    """
    before_passes = decoder.forward_passes
    jobs = [make_job(s, tiny_bundle, make_machine) for s in SPECS]
    results = decoder.decode([job for job, _ in jobs])
    saw_tail = saw_no_tail = False
    for (_, trace), result in zip(jobs, results, strict=True):
        stats = result.stats
        assert stats.generated == sum(trace.generated) and stats.injected == len(trace.ids) - stats.generated
        tail = trace.tail_injected
        saw_tail |= tail > 0
        saw_no_tail |= tail == 0
        assert stats.fed_tokens == stats.prompt_tokens + stats.injected + stats.generated - 1 - tail
        # One pass per decision: the prefill yields the first decision's logits, and each later
        # decision costs one pass that feeds the previous token plus any injected chunk.
        assert stats.forward_passes == stats.generated
    assert saw_tail and saw_no_tail  # both endings are in the batch
    # The batch as a whole: 1 prefill + one pass per further decision of its longest row.
    longest = max(r.stats.generated for r in results)
    assert decoder.forward_passes - before_passes == 1 + (longest - 1)


def test_shared_prefix_is_computed_once_per_process(tiny_bundle, machine, make_machine) -> None:
    decoder = LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device, split_chunks=False)
    assert decoder.prefix_passes == 0
    for size in (1, 3, 2, 4):
        decoder.decode([make_job(s, tiny_bundle, make_machine)[0] for s in SPECS[:size]])
    assert decoder.prefix_passes == 1
    assert len(decoder.prefix_ids) > 10  # the system prompt really is shared, not empty


def test_a_failing_program_fails_only_its_row(decoder, tiny_bundle, make_machine) -> None:
    def broken():
        yield from ()
        raise RuntimeError("schema the machine cannot template")

    good, _ = make_job(SPECS[0], tiny_bundle, make_machine)
    bad = DecodeJob(good.prompt_ids, good.soft_embeddings, broken())
    results = decoder.decode([bad, good])
    assert results[0].error and "cannot template" in results[0].error and not results[0].calls
    assert results[1].error is None and results[1].calls
    alone = decoder.decode([make_job(SPECS[0], tiny_bundle, make_machine)[0]])[0]
    same(results[1], alone)


def test_empty_batch(decoder) -> None:
    assert decoder.decode([]) == []


def test_retriever_prior_steers_the_first_name_choice(decoder, tiny_bundle, make_machine) -> None:
    """A name prior is a bias per branch token: a strong prior picks its tool for the first call;
    a flat prior leaves the LMS's own choice alone."""
    tokenizer = tiny_bundle.lms_tokenizer
    candidates = [WEATHER, FLIGHTS, PING]
    machine = make_machine(max_calls=1, **LIMITS)
    soft = torch.randn(1, tiny_bundle.lms_dim, generator=torch.Generator().manual_seed(7))
    prompt = tokenizer.encode(lms_job_prompt("weather in Rome", candidates, 1), add_special_tokens=False)

    def first_name(prior: list[float] | None) -> str:
        (result,) = decoder.decode([DecodeJob(prompt, soft, machine.program(candidates, prior=prior))])
        assert result.error is None
        return result.calls[0].name

    own = first_name(None)
    assert first_name([0.0, 0.0, 0.0]) == own
    for target in range(3):
        prior = [0.0 if i == target else -1e4 for i in range(3)]
        assert first_name(prior) == candidates[target].name


def test_name_prior_bias_is_the_log_mass_behind_each_token(make_machine) -> None:
    """Options sharing a first token pool their prior; the biases are log-probabilities."""
    machine = make_machine()
    options = [[1, 2], [1, 3], [4]]
    program = machine._choose(options, None, prior=[math.log(0.5), math.log(0.25), math.log(0.25)])
    step = next(program)
    assert isinstance(step, Generate) and step.allowed == [1, 4]
    assert step.bias == pytest.approx([math.log(0.75), math.log(0.25)])
    step = program.send(1)
    assert step.allowed == [2, 3]
    assert step.bias == pytest.approx([math.log(2 / 3), math.log(1 / 3)])


def test_a_decoder_without_a_config_has_the_serving_defaults(tiny_bundle, machine) -> None:
    """Defaults live in one place: a bare decoder splits passes and bounds tokens as the config does."""
    import inspect

    from hyfunc.config import CascadeConfig

    config = CascadeConfig()
    assert Budgets() == Budgets(config.max_job_tokens, config.max_call_tokens)
    default_split = inspect.signature(LMSDecoder.__init__).parameters["split_chunks"].default
    assert default_split is config.split_chunks
    bare = LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device)
    assert bare.budgets == Budgets(config.max_job_tokens, config.max_call_tokens)
    assert bare.widths is not None  # CPU: passes are split as served
