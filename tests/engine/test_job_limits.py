"""Bounded work per job in the engine (issue 17, part 1).

- a long prompt is prefilled in slices (runner.PREFILL_SLICE_TOKENS): the hidden states and the
  decoded calls are those of one pass, and with soft-token slots too;
- what a schema compiles to is measured (hyfunc.schema_limits) and a tool over a limit is named
  with its field and the config key.
"""

from __future__ import annotations

import pytest
import torch
from engine_support import WEATHER, tool

from hyfunc.cascade import runner as runner_module
from hyfunc.cascade.runner import TransformersRunner
from hyfunc.schema import Tool
from hyfunc.schema_limits import CompileLimits, SchemaTooLarge, check_tools, tool_problem


def test_sliced_prefill_equals_one_pass(tiny_bundle, tiny_decoder, monkeypatch) -> None:
    model = tiny_bundle.lms
    soft_id = tiny_decoder.soft_id
    prefix = [5, 6, 7, 8]
    long_a = [10 + i % 50 for i in range(37)] + [soft_id] + [60 + i % 30 for i in range(20)]
    long_b = [70 + i % 20 for i in range(25)]
    soft = torch.randn(1, model.config.hidden_size)

    def run(slice_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        monkeypatch.setattr(runner_module, "PREFILL_SLICE_TOKENS", slice_tokens)
        runner = TransformersRunner(model, tiny_decoder.pad_id, soft_id, tiny_bundle.device)
        start = runner.encode_prefix(prefix)
        first = runner.prefill([start], [[90, 91]], [None])  # a running row, then two long joiners
        joined = runner.prefill([start, start], [long_a, long_b], [soft, None])
        after = runner.forward([[92], [93], [94]], [None, None, None])
        return torch.cat([first, joined]), after

    whole, whole_after = run(10_000)
    sliced, sliced_after = run(8)  # 58 and 25 tokens in slices of 8, the soft slot in the fifth
    assert torch.allclose(whole, sliced, atol=1e-5)
    assert torch.allclose(whole_after, sliced_after, atol=1e-5)


def test_sliced_prefill_keeps_decoded_calls(tiny_bundle, cascade, monkeypatch) -> None:
    from hyfunc.schema import parse_request

    requests = [parse_request({"id": str(i), "query": q, "tools": [WEATHER.to_json()]})
                for i, q in enumerate(["weather in Lyon in celsius", "forecast for Oslo for 3 days"])]
    monkeypatch.setattr(runner_module, "PREFILL_SLICE_TOKENS", 100_000)
    whole = cascade.run(requests)
    monkeypatch.setattr(runner_module, "PREFILL_SLICE_TOKENS", 4)
    sliced = cascade.run(requests)
    assert [r.calls for r in whole] == [r.calls for r in sliced]
    assert [r.error for r in sliced] == [None, None]


def enum_tool(values: int, *, optional_after: int = 0) -> Tool:
    props: dict = {"pick": {"type": "string", "enum": [f"value-{i}" for i in range(values)]}}
    for i in range(optional_after):
        props[f"opt{i}"] = {"type": "string"}
    return tool("choose", props, ["pick"])


def test_enum_size_is_limited_naming_the_field() -> None:
    limits = CompileLimits(max_enum_values=100)
    assert tool_problem(enum_tool(100), "tools[0]", limits) is None
    problem = tool_problem(enum_tool(101), "tools[0]", limits)
    assert problem == ("tools[0].function.parameters.properties.pick.enum has 101 values; "
                       "limit limits.max_enum_values is 100")
    with pytest.raises(SchemaTooLarge, match="tools\\[1\\].function.parameters.properties.pick.enum"):
        check_tools([WEATHER, enum_tool(101)], limits)


def test_template_options_count_the_continuations() -> None:
    """An enum followed by n optional keys is n + 1 options per value (each value may be followed
    by any of them or the closing brace): the product is what is limited, not the enum alone."""
    limits = CompileLimits(max_enum_values=None, max_template_options=1_000, max_choice_bytes=None,
                           max_schema_chars=None)
    assert tool_problem(enum_tool(90, optional_after=9), "t", limits) is None  # 900 + keys and values
    problem = tool_problem(enum_tool(100, optional_after=10), "t", limits)
    assert problem is not None and "limit limits.max_template_options is 1000" in problem
    assert "compiles to 11" in problem  # 100 values x 11 continuations + the keys' own options


def test_properties_choice_bytes_and_schema_chars() -> None:
    many = tool("wide", {f"p{i}": {"type": "integer"} for i in range(30)})
    assert "properties has 30 properties; limit limits.max_properties is 20" in str(
        tool_problem(many, "tools[0]", CompileLimits(max_properties=20)))
    long_values = tool("longs", {"v": {"type": "string", "enum": ["x" * 200] * 10}}, ["v"])
    assert "limit limits.max_choice_bytes is 1000" in str(
        tool_problem(long_values, "tools[0]", CompileLimits(max_choice_bytes=1_000)))
    wordy = tool("wordy", {"q": {"type": "string"}}, ["q"], description="word " * 500)
    assert "limit limits.max_schema_chars is 1000" in str(
        tool_problem(wordy, "tools[0]", CompileLimits(max_schema_chars=1_000)))
    # The defaults leave ordinary tools alone.
    assert tool_problem(WEATHER, "tools[0]", CompileLimits()) is None


def test_a_job_over_a_limit_fails_alone_in_the_cascade(tiny_config) -> None:
    """The worker-side enforcement: a candidate over a compile limit, or a prompt over
    cascade.max_prompt_tokens, fails its own job before any prefill; its neighbours decode."""
    from hyfunc.cascade import Cascade
    from hyfunc.schema import parse_request

    tiny_config.cascade.relevance_threshold = -1.0
    tiny_config.limits.max_enum_values = 50
    cascade = Cascade.load(tiny_config)
    bomb = enum_tool(60).to_json()
    requests = [parse_request({"id": "bomb", "query": "choose value-7", "tools": [WEATHER.to_json(), bomb]}),
                parse_request({"id": "ok", "query": "weather in Lyon", "tools": [WEATHER.to_json()]})]
    passes = cascade.decoder.forward_passes
    out = cascade.run(requests)
    assert out[0].error is not None and out[0].calls == [], out[0]
    assert "tools[1].function.parameters.properties.pick.enum has 60 values" in out[0].error
    assert "limits.max_enum_values is 50" in out[0].error and out[0].tokens.lms_prompt > 0
    assert out[1].error is None and out[1].calls, out[1]
    assert cascade.decoder.forward_passes - passes == out[1].forward_passes.lms  # the bomb ran no pass

    cascade.config.max_prompt_tokens = 20
    long = cascade.run([parse_request({"id": "long", "query": "weather in Lyon", "tools": [WEATHER.to_json()]})])[0]
    assert long.error is not None and "limit cascade.max_prompt_tokens is 20" in long.error


def test_a_long_prompt_is_fed_across_steps_beside_running_rows(tiny_bundle, tiny_decoder, make_machine,
                                                                monkeypatch) -> None:
    """A prompt longer than PREFILL_SLICE_TOKENS is fed that many tokens per step, as a carried
    chunk: the calls and every decision are those of one prefill pass, and a short job admitted
    with a long one finishes while the long one is still being fed."""
    from test_decoder import SPECS, make_job

    def jobs():
        return [make_job(s, tiny_bundle, make_machine)[0] for s in SPECS]

    monkeypatch.setattr(runner_module, "PREFILL_SLICE_TOKENS", 100_000)
    whole = tiny_decoder.decode(jobs())
    monkeypatch.setattr(runner_module, "PREFILL_SLICE_TOKENS", 8)
    fed = tiny_decoder.decode(jobs())
    for a, b in zip(whole, fed, strict=True):
        assert a.error is None and b.error is None
        assert [c.model_dump() for c in a.calls] == [c.model_dump() for c in b.calls]
        assert (a.stats.generated, a.stats.injected, a.stats.fed_tokens) == (b.stats.generated, b.stats.injected,
                                                                              b.stats.fed_tokens)
    assert all(r.stats.carry_passes > 0 for r in fed)  # every demo prompt is longer than 8 tokens
    # The short "ping" job against the long repeated email query: the long one is fed 8 tokens a
    # step, so the short one's decisions are not held up behind its whole prompt.
    monkeypatch.setattr(runner_module, "PREFILL_SLICE_TOKENS", 16)
    long_job, short_job = make_job(SPECS[1], tiny_bundle, make_machine)[0], make_job(SPECS[4], tiny_bundle,
                                                                                   make_machine)[0]
    done = dict(tiny_decoder.stream([long_job, short_job], max_rows=2))
    long_row, short_row = done[0].stats, done[1].stats
    assert long_row.first_pass == short_row.first_pass  # admitted in the same step
    # The long row spent its first carry_passes + 1 passes on its prompt; the short one was done by then.
    assert short_row.forward_passes <= long_row.carry_passes, (short_row, long_row)


def test_long_prompts_are_fed_apart_a_slice_per_step_in_all(tiny_bundle, tiny_decoder, make_machine,
                                                            monkeypatch) -> None:
    """Several long prompts admitted with a short job (12 pathological schemas beside a normal job,
    in small): they are fed in passes of their own, one row each, PREFILL_SLICE_TOKENS tokens per
    step in all, oldest first — never padded into a pass with other rows —, and join the running
    batch when whole. The short job decides every step and is done before they are all fed; the
    calls are those of whole-prompt prefills."""
    from collections import Counter

    from test_decoder import SPECS, make_job

    long_specs, short_spec = [SPECS[1], SPECS[5], SPECS[2]], SPECS[4]

    def jobs():
        return [make_job(s, tiny_bundle, make_machine)[0] for s in [*long_specs, short_spec]]

    monkeypatch.setattr(runner_module, "PREFILL_SLICE_TOKENS", 100_000)
    whole = tiny_decoder.decode(jobs())
    built = jobs()
    short_len, long_len = len(built[-1].prompt_ids), min(len(j.prompt_ids) for j in built[:-1])
    slice_tokens = short_len + 40  # the short prompt and its first injection fit one slice
    assert long_len > 2 * slice_tokens, (short_len, long_len)
    monkeypatch.setattr(runner_module, "PREFILL_SLICE_TOKENS", slice_tokens)

    session = tiny_decoder.continuous(max_rows=4)
    for key, job in enumerate(built):
        session.submit(key, job)
    passes: list[tuple[int, str, list[int]]] = []  # (step, which runner, chunk lengths)
    forward = TransformersRunner.forward

    def recording(self, chunks, soft):
        which = "feeding" if any(self is r for _, r in session.feeding) else "batch" if self is session.runner else "join"
        passes.append((session.steps, which, [len(c) for c in chunks]))
        return forward(self, chunks, soft)

    monkeypatch.setattr(TransformersRunner, "forward", recording)
    done: dict[int, tuple[int, object]] = {}
    while session.has_work():
        for key, result in session.step():
            done[key] = (session.steps, result)

    fed = Counter()
    for step, which, lengths in passes:
        if which == "feeding":
            assert len(lengths) == 1  # a long prompt never shares (and pads) a pass
            fed[step] += lengths[0]
        elif which == "batch":  # the running batch only ever feeds decisions' chunks, never a prompt
            assert max(lengths) < long_len, lengths
    # The step's budget, used whole until the last long prompt is in: the prompts were fed in turns
    # over many steps, not side by side.
    steps = sorted(fed)
    assert all(fed[s] == slice_tokens for s in steps[:-1]) and 0 < fed[steps[-1]] <= slice_tokens, fed
    assert len(steps) >= sum(len(j.prompt_ids) for j in built[:-1]) // slice_tokens - 3, fed
    # The short job made a decision every step from its first: it never waited for them.
    short = done[3][1].stats
    assert short.first_pass == 0 and short.forward_passes == done[3][0] == short.generated, short
    for a, (_, b) in zip(whole, [done[k] for k in range(4)], strict=True):
        assert b.error is None and [c.model_dump() for c in a.calls] == [c.model_dump() for c in b.calls]
        assert (a.stats.generated, a.stats.injected, a.stats.fed_tokens) == (b.stats.generated, b.stats.injected,
                                                                              b.stats.fed_tokens)
        assert b.stats.forward_passes == b.stats.generated + b.stats.carry_passes
