"""The function index: persisted and reloaded with the same ranking; only new or edited tools are
embedded; an index made with other model versions is discarded."""

from __future__ import annotations

import dataclasses

import torch
from engine_support import ALL_TOOLS, EMAIL, PING, WEATHER, request

from hyfunc.cascade import Cascade
from hyfunc.cascade.engine import Cascade as CascadeClass
from hyfunc.cascade.index import FunctionIndex

REQUESTS = [
    request("weather in Rome", [WEATHER, PING, EMAIL], "a"),
    request("email the team", ALL_TOOLS, "b"),
    request("is it up?", [PING, WEATHER], "c"),
]


def ranking(results) -> list[list[tuple[str, float]]]:
    return [[(c.name, round(c.score, 5)) for c in r.candidates] for r in results]


def test_persist_reload_same_ranking(tiny_config) -> None:
    first = Cascade.load(tiny_config)
    expected = first.run(REQUESTS)
    assert first.index.embedded_count == len(ALL_TOOLS)

    # The saved index, loaded directly, holds the same rows and ranks the same queries the same way.
    loaded = FunctionIndex.load(tiny_config.cascade.index_dir, first.index_version)
    assert loaded.hashes == first.index.hashes and loaded.names == first.index.names
    assert torch.equal(loaded.keys, first.index.keys)
    queries = torch.nn.functional.normalize(torch.randn(3, first.index.keys.shape[1]), dim=-1)
    tool_lists = [r.tools for r in REQUESTS]
    a = first.index.search(queries, tool_lists, 3)
    b = loaded.search(queries, tool_lists, 3)
    assert [[(h.tool.name, h.score) for h in row] for row in a] == [[(h.tool.name, h.score) for h in row] for row in b]

    # A new process (a new Cascade) reuses it: nothing is embedded again, same candidates.
    second = Cascade.load(tiny_config)
    assert len(second.index) == len(ALL_TOOLS)
    again = second.run(REQUESTS)
    assert second.index.embedded_count == 0 and second.index_passes == 0
    assert ranking(again) == ranking(expected)
    assert [r.calls for r in again] == [r.calls for r in expected]


def test_editing_one_tool_re_embeds_only_that_tool(tiny_config) -> None:
    Cascade.load(tiny_config).run(REQUESTS)
    cascade = Cascade.load(tiny_config)
    edited = WEATHER.model_copy(deep=True)
    edited.function.description = "Weather, now with air quality."
    assert edited.content_hash() != WEATHER.content_hash()
    results = cascade.run([request("weather in Rome", [edited, PING, EMAIL], "a")])
    assert cascade.index.embedded_count == 1
    assert cascade.index_passes == 1
    assert edited.content_hash() in cascade.index and WEATHER.content_hash() in cascade.index
    assert results[0].candidates
    # Persisted: a third process embeds nothing.
    third = Cascade.load(tiny_config)
    third.run([request("weather in Rome", [edited, PING, EMAIL], "a")])
    assert third.index.embedded_count == 0


def test_index_from_other_model_versions_is_discarded(tiny_config, tiny_bundle) -> None:
    Cascade.load(tiny_config).run(REQUESTS)
    assert FunctionIndex.load(tiny_config.cascade.index_dir, "some-other-version").hashes == []
    # A retrained retriever (another version in the manifest) starts from an empty index.
    manifest = dataclasses.replace(
        tiny_bundle.manifest, versions={**tiny_bundle.manifest.versions, "retriever": "retrained"}
    )
    retrained = CascadeClass(dataclasses.replace(tiny_bundle, manifest=manifest), tiny_config.cascade, tiny_config.cascade.index_dir)
    assert len(retrained.index) == 0
    retrained.run(REQUESTS)
    assert retrained.index.embedded_count == len(ALL_TOOLS)


def test_torn_index_is_rebuilt(tiny_config) -> None:
    cascade = Cascade.load(tiny_config)
    cascade.run(REQUESTS)
    index = FunctionIndex.load(tiny_config.cascade.index_dir, cascade.index_version)
    index.hashes.append("0" * 32)  # metadata and tensors disagree, as after a torn write
    index.names.append("ghost")
    index.save(tiny_config.cascade.index_dir)
    assert len(FunctionIndex.load(tiny_config.cascade.index_dir, cascade.index_version)) == 0


def test_search_is_masked_to_each_requests_tools(tiny_config) -> None:
    cascade = Cascade.load(tiny_config)
    results = cascade.run(REQUESTS)
    for req, res in zip(REQUESTS, results, strict=True):
        assert {c.name for c in res.candidates} <= {t.name for t in req.tools}
        assert len(res.candidates) == min(3, len(req.tools))
