"""The vLLM backends against the transformers ones, on tiny random-init Llama models loaded by vLLM.

Skipped where vLLM is not installed (the default test venv); CI runs this file in the vLLM venv
(docs/vllm.md). One cascade per backend for the module: vLLM's engine start is the slow part.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402
from engine_support import ALL_TOOLS, CONVERT, EMAIL, FLIGHTS, THERMOSTAT, WEATHER, request  # noqa: E402
from vllm_support import write_tiny_llama_models  # noqa: E402

QUERIES = [
    ("What's the weather in Berlin tomorrow in fahrenheit?", [WEATHER, EMAIL, THERMOSTAT]),
    ("Send an email to bob@example.com with subject Lunch", [EMAIL, WEATHER]),
    ("Set the living room thermostat to 21.5 degrees.", [THERMOSTAT, CONVERT, WEATHER]),
    ("Find flights from Boston to Denver on 2026-03-14 for 2 adults", [FLIGHTS, WEATHER, EMAIL]),
    ("Convert 250 US dollars to euros", [CONVERT, THERMOSTAT]),
    ("Weather in Paris for 3 days", [WEATHER, EMAIL, THERMOSTAT]),
    ("Anything at all", ALL_TOOLS),
]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_models(tmp_path_factory.mktemp("tiny-llama") / "models")


def _config(models_dir: Path, index_dir: Path, backend: str):
    from hyfunc.config import load_config

    config = load_config(
        overrides={
            "models.dir": str(models_dir),
            "models.lms_backend": backend,
            "models.intent_backend": backend,
            "models.vllm_kv_cache_bytes": 64 * 2**20,
        }
    )
    config.cascade.index_dir = str(index_dir)
    # Random models rarely close a string or an array themselves: short caps keep answers short.
    config.cascade.max_string_tokens = 6
    config.cascade.max_array_items = 2
    config.cascade.max_number_tokens = 4
    config.cascade.batch_size = 4
    config.cascade.retriever_prior = 1.0
    config.cascade.copy_values = True
    return config


@pytest.fixture(scope="module")
def cascades(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(transformers cascade, vLLM cascade) on the same models; vLLM's engine core in this process."""
    from hyfunc.cascade import Cascade

    saved = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        hf = Cascade.load(_config(llama_dir, tmp_path_factory.mktemp("index-hf"), "transformers"))
        vl = Cascade.load(_config(llama_dir, tmp_path_factory.mktemp("index-vllm"), "vllm"))
        yield hf, vl
    finally:
        if saved is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = saved


def _requests():
    return [request(q, tools, rid=str(i)) for i, (q, tools) in enumerate(QUERIES)]


def _answer(result):
    return ([c.model_dump() for c in result.calls], result.error, result.no_call_reason is not None)


def test_vllm_cascade_is_the_configured_backend(cascades):
    from hyfunc.backends.vllm_intent import VLLMIntentEncoder
    from hyfunc.backends.vllm_lms import VLLMLMSBackend

    _, vl = cascades
    assert isinstance(vl.decoder, VLLMLMSBackend)
    assert isinstance(vl.intent, VLLMIntentEncoder)
    assert vl.bundle.intent_model is None  # the transformers LML is not loaded beside vLLM's


def test_lml_soft_tokens_match_transformers(cascades):
    hf, vl = cascades
    queries = [q for q, _ in QUERIES]
    a, b = hf.intent.soft_tokens(queries), vl.intent.soft_tokens(queries)
    assert a.prompt_tokens == b.prompt_tokens  # the same tokenisation (no BOS added, same truncation)
    torch.testing.assert_close(b.soft_tokens, a.soft_tokens, atol=2e-4, rtol=2e-4)
    tools = ALL_TOOLS
    before = vl.intent.forward_passes
    emb = vl.intent.function_embeddings(tools, batch_size=4)
    assert vl.intent.forward_passes - before == 2  # 6 tools in engine calls of 4: batch_size honoured
    torch.testing.assert_close(emb, hf.intent.function_embeddings(tools), atol=2e-4, rtol=2e-4)


def test_lml_truncates_as_transformers(cascades):
    hf, vl = cascades
    long = "weather " * 2000
    a, b = hf.intent.soft_tokens([long]), vl.intent.soft_tokens([long])
    assert a.prompt_tokens == b.prompt_tokens == [hf.intent.max_length]


def test_lms_same_calls_and_counters_as_transformers(cascades):
    hf, vl = cascades
    a, b = hf.run(_requests()), vl.run(_requests())
    assert [_answer(r) for r in b] == [_answer(r) for r in a]
    assert sum(len(r.calls) for r in a) > 0  # the comparison covers real calls, not only failures
    for x, y in zip(a, b, strict=True):
        assert y.tokens.generated == x.tokens.generated
        assert y.tokens.injected == x.tokens.injected
        assert y.tokens.lms_prompt == x.tokens.lms_prompt
        assert y.tokens.shared_prefix == x.tokens.shared_prefix
        if y.calls:
            # vLLM emits one token per step: every emitted token (decision or injected) is a pass.
            assert y.forward_passes.lms >= y.tokens.generated


def test_lms_prefix_cache_reuses_the_candidate_schemas(cascades):
    _, vl = cascades
    reqs = _requests()[:2]
    vl.run(reqs)
    again = vl.run(reqs)  # the same prompts: every full KV block before the soft slot is cached
    assert all(r.tokens.prompt_reused > 0 for r in again)
    assert all(r.tokens.prompt_reused + r.tokens.prompt_computed == r.tokens.lms_prompt for r in again)


def test_lms_budget_failures_match(cascades):
    from hyfunc.cascade.scheduler import Budgets

    hf, vl = cascades
    saved = hf.decoder.budgets, vl.decoder.budgets
    try:
        hf.decoder.budgets = vl.decoder.budgets = Budgets(max_job_tokens=3)
        a, b = hf.run(_requests()), vl.run(_requests())
    finally:
        hf.decoder.budgets, vl.decoder.budgets = saved
    assert [_answer(r) for r in b] == [_answer(r) for r in a]
    assert any(r.error and "max_job_tokens=3" in r.error for r in b)


def test_lms_session_rows_and_cancel(cascades):
    hf, vl = cascades
    prepared = vl.prepare(_requests())
    jobs = list(vl.decode_jobs(prepared))
    one_row = dict(vl.decoder.stream(iter(jobs), max_rows=1))
    reference = dict(hf.decoder.stream(hf.decode_jobs(hf.prepare(_requests())), max_rows=4))
    assert [one_row[i].calls for i in sorted(one_row)] == [reference[i].calls for i in sorted(reference)]

    session = vl.decoder.continuous(max_rows=1)
    fresh = list(vl.decode_jobs(prepared))
    for i, job in enumerate(fresh[:3]):
        session.submit(i, job)
    session.step()  # job 0 running, 1 and 2 waiting
    assert sorted(session.job_keys()) == [0, 1, 2]
    assert session.cancel({0, 2}) == 2
    done = {}
    while session.has_work():
        done.update(session.step())
    assert list(done) == [1]
    assert done[1].calls == reference[1].calls


def test_lms_jump_forward_same_calls_fewer_steps(cascades):
    """Injections handed back to the prompt (a chain of requests per job) or emitted one token per
    step: the same answers, and fewer engine steps with jump-forward."""
    _, vl = cascades
    backend = vl.decoder
    assert not backend.jump_forward  # models.vllm_jump_forward defaults to off
    reqs = _requests()
    before = backend.forward_passes
    plain = vl.run(reqs)
    plain_steps = backend.forward_passes - before
    backend.jump_forward = True
    try:
        before = backend.forward_passes
        jumped = vl.run(reqs)
        jump_steps = backend.forward_passes - before
    finally:
        backend.jump_forward = False
    assert [_answer(r) for r in jumped] == [_answer(r) for r in plain]
    assert [(r.tokens.generated, r.tokens.injected) for r in jumped] == [(r.tokens.generated, r.tokens.injected) for r in plain]
    assert jump_steps < plain_steps
    for r in plain:
        if r.calls:  # one emitted token per step: every decision and every injected token after the prompt
            assert r.forward_passes.lms == r.tokens.generated + r.tokens.injected


def test_bench_same_calls_check(cascades):
    """`hyfunc bench backends`' same-calls check (the demo held-out and BFCL samples use it)."""
    from types import SimpleNamespace

    from hyfunc.bench.backends import markdown, same_calls

    hf, vl = cascades
    examples = [SimpleNamespace(id=f"q{i}", query=q, tools=tools) for i, (q, tools) in enumerate(QUERIES)]
    out = same_calls(hf, vl, examples, 4, log=lambda _m: None, label="tiny")
    assert (out["jobs"], out["same"], out["agreement"], out["differences"]) == (len(QUERIES), len(QUERIES), 1.0, [])
    assert out["with_calls"] > 0
    report = {"models": "m", "dtype": "float32", "machine": {"cpu": "x"}, "rows": [], "same_calls_bfcl": {
        "multiple": {"jobs": 2, "same": 1, "agreement": 0.5, "differences": [
            {"id": "multiple_7", "query": "q", "transformers": {"calls": [], "error": None},
             "vllm": {"calls": [{"name": "f", "arguments": {}}], "error": None}, "generated": [3, 4]}]}}}
    text = markdown(report)
    assert "vLLM (vllm) vs transformers backend, BFCL multiple: 1/2 (0.5)" in text and "- multiple_7 `q`" in text and "| mode |" not in text


def test_the_engine_process_gets_the_jobs_no_call_choice() -> None:
    """ProgramSpec.allow_no_call (cascade.no_call_ceiling) travels to the engine process, which
    builds the job's program from this dict."""
    from hyfunc.backends.vllm_template import program_args
    from hyfunc.cascade.scheduler import Budgets
    from hyfunc.cascade.template import MachineLimits

    limits = MachineLimits(no_call=True)
    assert program_args([WEATHER], "q", None, limits, Budgets())["allow_no_call"] is True
    assert program_args([WEATHER], "q", None, limits, Budgets(), allow_no_call=False)["allow_no_call"] is False
