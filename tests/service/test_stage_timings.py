"""Every stage of hyfunc.stages is a timing column and every token counter a tokens_ column: a job
recorded from a real cascade run keeps the decoder's lms_wait / program / sample next to the rest,
the cascade's stages add up to total, and the store returns every counter and the warnings."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from hyfunc.schema import parse_request
from hyfunc.stages import CASCADE_STAGES, STAGES, TOKEN_COUNTERS, timing_column

WEATHER = {
    "name": "get_weather",
    "description": "Current weather or forecast for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]},
}
PING = {"name": "ping", "description": "Check that the service answers.",
        "parameters": {"type": "object", "properties": {}}}
# A schema accepted with a change (an enum whose values do not match its type): the result warns.
LENIENT = {"name": "set_level", "description": "Set a level.", "parameters": {"type": "object", "properties": {
    "level": {"type": "integer", "enum": ["1", "2", "dontcare"]}}}}
EMAIL = {
    "name": "send_email",
    "description": "Send an email.",
    "parameters": {"type": "object", "properties": {"to": {"type": "string"}, "body": {"type": "string"}},
                   "required": ["to", "body"]},
}


def test_recorded_jobs_keep_every_stage_and_the_cascade_stages_add_up(tiny_config, tmp_path) -> None:
    from hyfunc.cascade import Cascade
    from hyfunc.store.db import session_factory, transaction
    from hyfunc.store.jobs import job_to_dict
    from hyfunc.store.models import Job
    from hyfunc.store.recording import record_results

    assert {"lms_wait", "program", "sample"} <= set(CASCADE_STAGES)
    tiny_config.store.url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    tiny_config.cascade.batch_size = 2  # continuous batching: later jobs wait for a decoder row
    requests = [
        parse_request({"id": f"r{i}", "query": query, "tools": tools})
        for i, (query, tools) in enumerate([
            ("What's the weather in Berlin tomorrow?", [WEATHER, PING]),
            ("ping the service", [PING, EMAIL]),
            ("Email bob@example.com saying see you at noon", [EMAIL, WEATHER]),
            ("weather in Lisbon for 3 days", [WEATHER, LENIENT]),
        ])
    ]
    cascade = Cascade.load(tiny_config)
    results = cascade.run(requests)
    assert all(r.error is None for r in results), [r.error for r in results]
    ids = record_results(tiny_config, list(zip(requests, results, strict=True)), cascade.model_versions)
    assert len(ids) == len(requests)

    with transaction(session_factory(tiny_config.store.url)) as session:
        jobs = {job.client_id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
        dicts = {client_id: job_to_dict(job) for client_id, job in jobs.items()}
        stored = {client_id: d["timings_ms"] for client_id, d in dicts.items()}
    waited = 0.0
    for result in results:
        timings = stored[result.id]
        assert list(timings) == list(STAGES)
        # What the store returns is what the cascade measured, stage by stage.
        for stage in CASCADE_STAGES:
            assert timings[stage] == pytest.approx(getattr(result.timings_ms, stage)), stage
            assert getattr(jobs[result.id], timing_column(stage)) == timings[stage]
        assert timings["program"] > 0 and timings["sample"] > 0 and timings["lms_wait"] >= 0
        parts = sum(timings[stage] for stage in CASCADE_STAGES if stage != "total")
        assert parts == pytest.approx(timings["total"], abs=0.01)
        waited += timings["lms_wait"]
    assert waited > 0  # four jobs through two rows: someone waited
    for result in results:  # every token counter, and the warnings, as the cascade returned them
        assert dicts[result.id]["tokens"] == {c: getattr(result.tokens, c) for c in TOKEN_COUNTERS}
        assert dicts[result.id]["warnings"] == result.warnings
    assert any(r.warnings for r in results) and any(r.tokens.prompt_computed for r in results)
