"""Request, tool and result schemas (pydantic), shared by the CLI, the service and training.

Tools follow the OpenAI function format. Parameters are a JSON Schema subset:
string, integer, number, boolean, array (with items), object (with properties),
enum, required, default, description. A value with no type is accepted and treated
as a free JSON string by the template machine.

Schemas as users write them are accepted leniently (see `_lenient`): an `enum` whose values
do not match the declared type (the enum wins), `enum`/`const` without `type`, type lists and
`anyOf`/`oneOf` of simple types (one representable type is picked), `nullable`,
`additionalProperties`, `$schema`, `title`. Each such change leaves a warning on the node, and
`CallRequest.warnings` lists them with the field path; results carry them. What still cannot be
represented (`$ref`, `allOf`, `not`, unions of objects or arrays) fails that request, naming the field.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object", "null")


class ParamSchema(BaseModel):
    """One JSON Schema node of the supported subset."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: str | None = None
    description: str | None = None
    enum: list[Any] | None = None
    properties: dict[str, ParamSchema] | None = None
    required: list[str] | None = None
    items: ParamSchema | None = None
    default: Any = None
    # What leniency changed on this node (not its children), for CallRequest.warnings.
    _notes: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _lenient(cls, data: Any, handler: Any) -> ParamSchema:
        notes: list[str] = []
        if isinstance(data, dict):
            data = _normalise_node(data, notes)
        node = handler(data)
        node._notes[:0] = notes
        return node

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is not None and value not in JSON_TYPES:
            raise ValueError(f"unsupported type {value!r}; expected one of {', '.join(JSON_TYPES)}")
        return value

    @field_validator("enum")
    @classmethod
    def _enum_not_empty(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None and len(value) == 0:
            raise ValueError("enum must list at least one value")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ParamSchema:
        if self.required:
            props = self.properties or {}
            missing = [name for name in self.required if name not in props]
            if missing:
                # Seen in real tool docs (BFCL too): the template machine writes declared
                # properties only, so names it cannot write are dropped from `required`.
                self._notes.append(f"required names {missing} are not in properties; ignored")
                self.required = [name for name in self.required if name in props] or None
        if self.type == "array" and self.items is None:
            # An array without items is legal JSON Schema; treat its items as free strings.
            self.items = ParamSchema(type="string")
        if self.enum is not None and self.type in ("integer", "number", "boolean", "string"):
            bad = [v for v in self.enum if not _matches_scalar(self.type, v)]
            if bad:
                # OpenAI-style clients send e.g. integer with ['1', '2', 'dontcare']: the enum is
                # what the model may choose from, so it wins over the declared type.
                self._notes.append(
                    f"enum values {bad} do not match type {self.type!r}; the enum values are used as given"
                )
                kinds = {_literal_type(v) for v in self.enum}
                self.type = kinds.pop() if len(kinds) == 1 and None not in kinds else None
        return self

    def warnings(self, path: str) -> list[str]:
        """This node's and its children's leniency notes, each prefixed with its field path."""
        out = [f"{path}: {note}" for note in self._notes]
        for name, sub in (self.properties or {}).items():
            out.extend(sub.warnings(f"{path}.properties.{name}"))
        if self.items is not None:
            out.extend(self.items.warnings(f"{path}.items"))
        return out

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, by_alias=True)


# Keys that only annotate a schema ($schema, title, nullable, additionalProperties, examples, ...)
# pass through as extras: kept in the tool's JSON, ignored by the template machine, which writes
# declared properties only and never null.
# Keys whose meaning the template machine cannot honour: the request fails naming them.
_UNSUPPORTED_KEYS = ("$ref", "allOf", "not", "if", "patternProperties")
_SCALARS = ("string", "integer", "number", "boolean")


def _literal_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _pick_type(types: list[str], where: str, notes: list[str]) -> str:
    """One type the template machine can write for a union of simple types (null dropped)."""
    non_null = list(dict.fromkeys(t for t in types if t != "null"))
    if not non_null:
        return "null"
    if len(non_null) == 1:
        return non_null[0]
    if not all(isinstance(t, str) and t in _SCALARS for t in non_null):
        raise ValueError(f"{where} {types!r}: only unions of simple types (string, integer, number, boolean) are supported")
    # number holds every integer; any scalar can be written as a string; else the first listed.
    if set(non_null) <= {"integer", "number"}:
        chosen = "number"
    elif "string" in non_null:
        chosen = "string"
    else:
        chosen = non_null[0]
    notes.append(f"{where} {non_null} is a union; values are generated as {chosen!r}")
    return chosen


def _normalise_node(data: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Rewrite the JSON Schema constructs users send into the supported subset, noting changes."""
    present = [k for k in _UNSUPPORTED_KEYS if k in data]
    if present:
        raise ValueError(f"unsupported JSON Schema keyword {present[0]!r}")
    data = dict(data)
    if isinstance(data.get("type"), list):
        data["type"] = _pick_type(data["type"], "type", notes)
    for key in ("anyOf", "oneOf"):
        if key not in data:
            continue
        branches = data.pop(key)
        if not isinstance(branches, list) or not branches or not all(isinstance(b, dict) for b in branches):
            raise ValueError(f"{key} must be a non-empty list of schemas")
        non_null = [b for b in branches if b.get("type") != "null"]
        if len(non_null) == 1:
            # The nullable pattern [{...}, {"type": "null"}]: the branch is the schema.
            data = {**non_null[0], **{k: v for k, v in data.items() if k not in non_null[0]}}
            if isinstance(data.get("type"), list):
                data["type"] = _pick_type(data["type"], "type", notes)
            continue
        types = []
        for branch in non_null:
            extra = set(branch) - {"type", "description", "title", "format"}
            if extra or not isinstance(branch.get("type"), str):
                raise ValueError(f"{key}: only branches of simple types are supported, got {branch!r}")
            types.append(branch["type"])
        data.setdefault("type", _pick_type(types, key, notes))
    if "const" in data:
        # A constant is an enum of one: the template machine injects it.
        const = data.pop("const")
        data.setdefault("enum", [const])
    if data.get("type") is None and isinstance(data.get("enum"), list) and data["enum"]:
        kinds = {_literal_type(v) for v in data["enum"]}
        if len(kinds) == 1 and None not in kinds:
            data["type"] = kinds.pop()
    return data


def _matches_scalar(json_type: str, value: Any) -> bool:
    if json_type == "string":
        return isinstance(value, str)
    if json_type == "boolean":
        return isinstance(value, bool)
    if json_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if json_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=128)
    description: str = ""
    parameters: ParamSchema = Field(default_factory=lambda: ParamSchema(type="object", properties={}))

    @field_validator("name")
    @classmethod
    def _name_chars(cls, value: str) -> str:
        if any(ch in value for ch in '"\\\n\r\t') or value != value.strip():
            raise ValueError("function name must not contain quotes, backslashes, whitespace at the ends or newlines")
        return value

    @field_validator("parameters")
    @classmethod
    def _object_params(cls, value: ParamSchema) -> ParamSchema:
        if value.type is None and value.properties is not None:
            value.type = "object"
        if value.type != "object":
            raise ValueError(f"parameters must be a JSON Schema of type 'object', got {value.type!r}")
        if value.properties is None:
            value.properties = {}
        return value


class Tool(BaseModel):
    """An OpenAI-style tool: {"type": "function", "function": {...}}."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: FunctionSpec

    @model_validator(mode="before")
    @classmethod
    def _accept_bare_function(cls, data: Any) -> Any:
        # Many datasets (xlam, BFCL) store the bare function object; accept both shapes.
        if isinstance(data, dict) and "function" not in data and "name" in data:
            return {"type": "function", "function": data}
        return data

    @property
    def name(self) -> str:
        return self.function.name

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.function.name,
                "description": self.function.description,
                "parameters": self.function.parameters.to_json(),
            },
        }

    def content_hash(self) -> str:
        """Stable hash of the tool's content: the function index key."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


class CallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    query: str = Field(min_length=1)
    tools: list[Tool] = Field(min_length=1)

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must not be blank")
        return value

    @property
    def warnings(self) -> list[str]:
        """What lenient schema parsing changed, per field (empty for schemas in the strict subset)."""
        return [w for i, tool in enumerate(self.tools) for w in tool.function.parameters.warnings(f"tools.{i}.function.parameters")]

    @model_validator(mode="after")
    def _unique_names(self) -> CallRequest:
        names = [tool.name for tool in self.tools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tools: duplicate function names {dupes}")
        return self


class Call(BaseModel):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Candidate(BaseModel):
    name: str
    score: float


class StageTimings(BaseModel):
    # Milliseconds of the job's wall time inside the cascade, per stage; they add up to total
    # (the fields are hyfunc.stages.CASCADE_STAGES, each a timing column of the jobs table).
    lml: float = 0.0
    retrieve: float = 0.0
    lms_prefill: float = 0.0
    lms_decode: float = 0.0
    lms_wait: float = 0.0  # waiting for a decoder row (continuous batching)
    program: float = 0.0  # admission: template-machine programs and prompts built, cache lookups, KV layout
    sample: float = 0.0  # batched sampler, program steps, prefix-cache inserts
    total: float = 0.0


class TokenCounts(BaseModel):
    # The fields are hyfunc.stages.TOKEN_COUNTERS, each a tokens_<name> column of the jobs table.
    lml_prompt: int = 0
    lms_prompt: int = 0
    injected: int = 0
    generated: int = 0
    shared_prefix: int = 0
    prompt_reused: int = 0  # LMS prompt tokens whose KV came from the prefix cache
    prompt_computed: int = 0  # LMS prompt tokens run through the model (lms_prompt = reused + computed)


class ForwardPasses(BaseModel):
    lml: int = 0
    lms: int = 0


class CallResult(BaseModel):
    id: str | None = None
    calls: list[Call] = Field(default_factory=list)
    no_call_reason: str | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    timings_ms: StageTimings = Field(default_factory=StageTimings)
    tokens: TokenCounts = Field(default_factory=TokenCounts)
    forward_passes: ForwardPasses = Field(default_factory=ForwardPasses)
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)  # lenient-schema changes (CallRequest.warnings)


class RequestError(ValueError):
    """A request that failed validation, with a message naming the field and the problem."""


def describe_validation_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


def find_non_finite(value: Any, path: str = "") -> str | None:
    """The path of the first NaN or ±Infinity in a JSON-like value, or None.

    Python's json reads NaN, Infinity and 1e999 as floats, but they are not JSON: stored
    or echoed back they break PostgreSQL's json type and every strict client.
    Iterative, so a deeply nested value cannot exhaust the stack.
    """
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return where or "<root>"
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node))
    return None


def schema_depth(schema: Any) -> int:
    """How deep `properties`/`items` nest in a raw parameters schema (the object itself is 1).

    Read on the raw dict, before pydantic builds the recursive model, so the depth limit
    (limits.max_schema_depth) bounds that work too.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict):
            continue
        deepest = max(deepest, depth)
        props = node.get("properties")
        if isinstance(props, dict):
            stack.extend((sub, depth + 1) for sub in props.values())
        items = node.get("items")
        if isinstance(items, dict):
            stack.append((items, depth + 1))
        elif isinstance(items, list):  # tuple form
            stack.extend((sub, depth + 1) for sub in items)
        for key in ("anyOf", "oneOf", "allOf"):  # alternatives sit at the same level
            alternatives = node.get(key)
            if isinstance(alternatives, list):
                stack.extend((sub, depth) for sub in alternatives)
    return deepest


def parse_request(data: Any) -> CallRequest:
    """Validate one request dict; raise RequestError with a readable message."""
    if not isinstance(data, dict):
        raise RequestError(f"request must be a JSON object, got {type(data).__name__}")
    bad = find_non_finite(data)
    if bad is not None:
        raise RequestError(f"{bad}: NaN and Infinity are not JSON numbers")
    try:
        return CallRequest.model_validate(data)
    except ValidationError as err:
        raise RequestError(describe_validation_error(err)) from None


def validate_arguments(schema: ParamSchema, value: Any, path: str = "arguments") -> list[str]:
    """Check a value against the schema subset; returns a list of problems (empty = valid)."""
    problems: list[str] = []
    if schema.enum is not None and value not in schema.enum:
        problems.append(f"{path}: {value!r} not in enum {schema.enum!r}")
        return problems
    kind = schema.type
    if kind is None:
        return problems
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{path}: expected object"]
        props = schema.properties or {}
        for name in schema.required or []:
            if name not in value:
                problems.append(f"{path}.{name}: required but missing")
        for name, sub in value.items():
            if props and name not in props:
                problems.append(f"{path}.{name}: not a known property")
            elif name in props:
                problems.extend(validate_arguments(props[name], sub, f"{path}.{name}"))
    elif kind == "array":
        if not isinstance(value, list):
            return [f"{path}: expected array"]
        assert schema.items is not None
        for i, item in enumerate(value):
            problems.extend(validate_arguments(schema.items, item, f"{path}[{i}]"))
    elif kind == "null":
        if value is not None:
            problems.append(f"{path}: expected null")
    elif not _matches_scalar(kind, value):
        problems.append(f"{path}: expected {kind}, got {type(value).__name__}")
    return problems


def validate_call(call: Call, tools: list[Tool]) -> list[str]:
    by_name = {t.name: t for t in tools}
    tool = by_name.get(call.name)
    if tool is None:
        return [f"unknown function {call.name!r}"]
    return validate_arguments(tool.function.parameters, call.arguments)
