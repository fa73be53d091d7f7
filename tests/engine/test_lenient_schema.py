"""Tool schemas as users write them (issue 9, part 7): accepted, warned about, and the template
machine still writes calls that validate against them."""

from __future__ import annotations

import random

import pytest
from engine_support import drive, random_picker

from hyfunc.schema import Call, RequestError, parse_request, validate_call

PATH = "tools.0.function.parameters.properties"


def request(properties: dict, required: list[str] | None = None, **extra) -> dict:
    params = {"type": "object", "properties": properties, **extra}
    if required is not None:
        params["required"] = required
    return {"query": "q", "tools": [{"type": "function", "function": {"name": "f", "parameters": params}}]}


# (properties, property checked, expected JSON of that node, warning fragment or None)
CASES = [
    pytest.param({"n": {"type": "integer", "enum": ["1", "2", "3", "4", "5", "dontcare"]}}, "n",
                 {"type": "string", "enum": ["1", "2", "3", "4", "5", "dontcare"]}, "do not match type 'integer'",
                 id="integer-with-string-enum"),
    pytest.param({"b": {"type": "boolean", "enum": ["True", "False", "dontcare"]}}, "b",
                 {"type": "string", "enum": ["True", "False", "dontcare"]}, "do not match type 'boolean'",
                 id="boolean-with-string-enum"),
    pytest.param({"m": {"type": "integer", "enum": [1, "two"]}}, "m", {"enum": [1, "two"]}, "do not match type 'integer'",
                 id="mixed-enum-has-no-type"),
    pytest.param({"s": {"type": ["string", "null"]}}, "s", {"type": "string"}, None, id="nullable-type-list"),
    pytest.param({"s": {"type": ["integer", "number"]}}, "s", {"type": "number"}, "union", id="numeric-type-list"),
    pytest.param({"e": {"enum": ["red", "green"]}}, "e", {"type": "string", "enum": ["red", "green"]}, None,
                 id="enum-without-type"),
    pytest.param({"e": {"enum": [3, 5]}}, "e", {"type": "integer", "enum": [3, 5]}, None, id="int-enum-without-type"),
    pytest.param({"a": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "d"}}, "a",
                 {"type": "string", "description": "d"}, None, id="anyOf-nullable"),
    pytest.param({"a": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}, "a", {"type": "string"}, "anyOf",
                 id="anyOf-scalars"),
    pytest.param({"a": {"oneOf": [{"type": "boolean"}, {"type": "integer"}]}}, "a", {"type": "boolean"}, "oneOf",
                 id="oneOf-scalars"),
    pytest.param({"a": {"anyOf": [{"type": "object", "properties": {"x": {"type": "integer"}}}, {"type": "null"}]}}, "a",
                 {"type": "object", "properties": {"x": {"type": "integer"}}}, None, id="anyOf-nullable-object"),
    pytest.param({"c": {"const": "fixed"}}, "c", {"type": "string", "enum": ["fixed"]}, None, id="const"),
    pytest.param({"c": {"type": "string", "nullable": True}}, "c", {"type": "string", "nullable": True}, None,
                 id="openapi-nullable"),
    pytest.param({"o": {"type": "object", "title": "O", "additionalProperties": {"type": "string"},
                        "properties": {"k": {"type": "string"}}}}, "o",
                 {"type": "object", "title": "O", "additionalProperties": {"type": "string"},
                  "properties": {"k": {"type": "string"}}}, None, id="title-additionalProperties"),
]


@pytest.mark.parametrize("properties, name, expected, warning", CASES)
def test_accepted_with_warning(properties, name, expected, warning):
    req = parse_request(request(properties, **{"$schema": "https://json-schema.org/draft/2020-12/schema",
                                                "additionalProperties": False}))
    node = req.tools[0].function.parameters.properties[name]
    assert node.to_json() == expected
    if warning is None:
        assert req.warnings == []
    else:
        assert len(req.warnings) == 1 and req.warnings[0].startswith(f"{PATH}.{name}: ") and warning in req.warnings[0]


@pytest.mark.parametrize("properties, name, expected, warning", CASES)
def test_template_machine_writes_schema_valid_calls(machine, lms_tokenizer, properties, name, expected, warning):
    """Random walks through the program of each lenient schema end in calls validate_call accepts."""
    req = parse_request(request(properties, required=[name]))
    quote = lms_tokenizer.encode('"', add_special_tokens=False)[0]
    for seed in range(8):
        trace = drive(machine.program(req.tools), random_picker(random.Random(seed), quote, stop_bias=0.6))
        assert trace.calls, "the program ended without a call"
        for call in trace.calls:
            assert validate_call(call, req.tools) == [], (call, req.tools[0].to_json())


def test_enum_value_of_a_mismatched_type_validates():
    req = parse_request(request({"n": {"type": "integer", "enum": ["1", "2", "dontcare"]}}))
    assert validate_call(Call(name="f", arguments={"n": "dontcare"}), req.tools) == []
    assert validate_call(Call(name="f", arguments={"n": 1}), req.tools) == ["arguments.n: 1 not in enum ['1', '2', 'dontcare']"]


def test_nested_warnings_name_the_path():
    req = parse_request(request({"outer": {"type": "array", "items": {"type": "object", "properties": {
        "flag": {"type": "boolean", "enum": ["yes", "no"]}}}}}))
    assert req.warnings == [f"{PATH}.outer.items.properties.flag: enum values ['yes', 'no'] do not match type "
                            "'boolean'; the enum values are used as given"]


@pytest.mark.parametrize("node, problem", [
    ({"$ref": "#/$defs/x"}, "unsupported JSON Schema keyword '$ref'"),
    ({"allOf": [{"type": "string"}]}, "unsupported JSON Schema keyword 'allOf'"),
    ({"not": {"type": "string"}}, "unsupported JSON Schema keyword 'not'"),
    ({"anyOf": [{"type": "object"}, {"type": "string"}]}, "only unions of simple types"),
    ({"oneOf": []}, "oneOf must be a non-empty list"),
    ({"anyOf": [{"type": "string", "minLength": 2}, {"type": "integer"}]}, "only branches of simple types"),
])
def test_still_unsupported_fails_naming_the_field(node, problem):
    with pytest.raises(RequestError) as info:
        parse_request(request({"x": node}))
    assert f"{PATH}.x:" in str(info.value) and problem in str(info.value), str(info.value)


def test_result_carries_the_warnings(cascade):
    req = parse_request(request({"n": {"type": "integer", "enum": ["1", "2", "dontcare"]}}, required=["n"]))
    req.id = "w"
    result = cascade.run([req])[0]
    assert result.warnings == req.warnings and "dontcare" in result.warnings[0]
    assert "warnings" in result.model_dump()
    for call in result.calls:
        assert validate_call(call, req.tools) == []


def test_required_names_missing_from_properties_are_dropped_with_a_warning():
    req = parse_request(request({"pop": {"type": "object", "required": ["adults"]}, "x": {"type": "string"}},
                                required=["x", "ghost"]))
    params = req.tools[0].function.parameters
    assert params.required == ["x"] and params.properties["pop"].required is None
    assert req.warnings == [
        "tools.0.function.parameters: required names ['ghost'] are not in properties; ignored",
        f"{PATH}.pop: required names ['adults'] are not in properties; ignored",
    ]
