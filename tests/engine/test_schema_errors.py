"""A bad request or tool schema is rejected with a message naming the field and the problem."""

from __future__ import annotations

import pytest

from hyfunc.schema import Call, RequestError, parse_request, validate_call

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def with_params(params) -> dict:
    return {"query": "q", "tools": [{"type": "function", "function": {"name": "f", "parameters": params}}]}


@pytest.mark.parametrize(
    "data, field, problem",
    [
        (with_params({"type": "object", "properties": {"x": {"type": "str"}}}), "tools.0.function.parameters.properties.x.type", "unsupported type 'str'"),
        (with_params({"type": "object", "properties": {"x": {"type": "string", "enum": []}}}), "tools.0.function.parameters.properties.x.enum", "at least one value"),
        (with_params({"type": "object", "properties": {"x": {"$ref": "#/defs/x"}}}), "tools.0.function.parameters.properties.x", "unsupported JSON Schema keyword '$ref'"),
        (with_params({"type": "object", "properties": {"x": {"allOf": [{"type": "string"}]}}}), "tools.0.function.parameters.properties.x", "unsupported JSON Schema keyword 'allOf'"),
        (with_params({"type": "array", "items": {"type": "string"}}), "tools.0.function.parameters", "type 'object'"),
        (with_params({"type": "object", "properties": {"x": {"type": ["object", "string"]}}}), "tools.0.function.parameters.properties.x", "only unions of simple types"),
        (with_params({"type": "object", "properties": {"x": {"anyOf": [{"type": "array"}, {"type": "string"}]}}}), "tools.0.function.parameters.properties.x", "only unions of simple types"),
        ({"query": "q", "tools": [WEATHER, WEATHER]}, "tools", "duplicate function names ['get_weather']"),
        ({"query": "   ", "tools": [WEATHER]}, "query", "must not be blank"),
        ({"query": "", "tools": [WEATHER]}, "query", "at least 1 character"),
        ({"query": "q", "tools": []}, "tools", "at least 1 item"),
        ({"tools": [WEATHER]}, "query", "Field required"),
        ({"query": "q", "tools": [WEATHER], "tool_choice": "auto"}, "tool_choice", "Extra inputs"),
        ({"query": "q", "tools": [{"type": "function", "function": {"name": 'a"b'}}]}, "tools.0.function.name", "quotes"),
        ({"query": "q", "tools": [{"type": "function", "function": {"name": ""}}]}, "tools.0.function.name", "at least 1 character"),
        ({"query": "q", "tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools.0.type", "'function'"),
    ],
)
def test_request_errors_name_field_and_problem(data, field: str, problem: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(data)
    message = str(info.value)
    assert f"{field}:" in message, message
    assert problem in message, message


def test_non_object_request() -> None:
    with pytest.raises(RequestError, match="must be a JSON object, got list"):
        parse_request([1])


def test_accepted_shapes() -> None:
    bare = parse_request({"query": "q", "tools": [WEATHER["function"]]})  # xlam/BFCL bare functions
    assert bare.tools[0].name == "get_weather"
    nullable = parse_request(with_params({"type": "object", "properties": {"x": {"type": ["string", "null"]}}}))
    assert nullable.tools[0].function.parameters.properties["x"].type == "string"
    untyped = parse_request(with_params({"properties": {"x": {}}}))
    assert untyped.tools[0].function.parameters.type == "object"


def test_validate_call_names_the_argument() -> None:
    tools = parse_request({"query": "q", "tools": [WEATHER]}).tools
    assert validate_call(Call(name="get_weather", arguments={"city": "x"}), tools) == []
    assert validate_call(Call(name="nope", arguments={}), tools) == ["unknown function 'nope'"]
    assert validate_call(Call(name="get_weather", arguments={}), tools) == ["arguments.city: required but missing"]
    assert validate_call(Call(name="get_weather", arguments={"city": 1}), tools) == ["arguments.city: expected string, got int"]
    assert validate_call(Call(name="get_weather", arguments={"city": "x", "zip": "1"}), tools) == [
        "arguments.zip: not a known property"
    ]
