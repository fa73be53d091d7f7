"""Training data loaders: xlam-60k records and BFCL question/answer files -> `Example`s.

Every loader validates record by record. A malformed record is skipped and reported with
its position (1-based line number in JSONL, 0-based index in a JSON array) and the reason,
so one bad line in a 60k-line file costs one example, not the run; `strict=True` turns
any bad record into a `DataError` listing them all.

Two schema dialects are converted here and only here, because real clients send JSON
Schema and nothing downstream should learn the datasets' quirks:
- BFCL's (`dict`, `float`, `tuple`, `any`);
- the original xlam-60k's (parameters as a flat {name: {type: "str, optional", ...}} map).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from hyfunc.jsonl import jsonl_records
from hyfunc.schema import Call, Tool, describe_validation_error, validate_call


@dataclass
class Example:
    """One training/eval record: a query, the candidate tools, the gold calls ([] = no call)."""

    query: str
    tools: list[Tool]
    answers: list[Call]
    source: str = ""
    position: int = 0
    id: str | None = None

    def to_xlam(self) -> dict[str, Any]:
        """The record in xlam format (what the service export writes and `load_xlam` reads)."""
        record: dict[str, Any] = {
            "query": self.query,
            "tools": [tool.to_json() for tool in self.tools],
            "answers": [call.model_dump() for call in self.answers],
        }
        if self.id is not None:
            record = {"id": self.id, **record}
        return record


@dataclass
class LoadReport:
    """What one load kept and what it skipped, with why."""

    source: str
    good: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.good + len(self.errors)

    def summary(self, max_errors: int = 10) -> str:
        lines = [f"{self.source}: {self.good} good, {len(self.errors)} skipped"]
        for position, reason in self.errors[:max_errors]:
            lines.append(f"  {position}: {reason}")
        if len(self.errors) > max_errors:
            lines.append(f"  ... and {len(self.errors) - max_errors} more")
        return "\n".join(lines)


class DataError(ValueError):
    """A data file that cannot be used: unreadable, or with bad records under strict=True."""

    def __init__(self, source: str, errors: list[tuple[int, str]]):
        self.source = source
        self.errors = errors
        shown = "\n".join(f"  {pos}: {reason}" for pos, reason in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{source}: {len(errors)} bad record(s)\n{shown}{more}")


class RecordError(ValueError):
    """One malformed record; the message is the reason reported with its position."""


# --------------------------------------------------------------------------- file reading


def _read_records(path: Path) -> tuple[Iterator[tuple[int, Any]], int | None]:
    """(position, parsed JSON or RecordError) pairs from a JSON array or JSONL file.

    Returns the iterator and the record count when known cheaply (for the progress bar).
    JSONL is streamed so a large file is never held in memory twice.
    """
    with path.open("r", encoding="utf-8") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith("["):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(str(path), [(0, f"invalid JSON array: {err}")]) from None
        return iter(enumerate(data)), len(data)

    def lines() -> Iterator[tuple[int, Any]]:
        for number, value in jsonl_records(path):
            yield number, RecordError(f"invalid JSON: {value}") if isinstance(value, json.JSONDecodeError) else value

    return lines(), None


def _progress(items: Iterable[Any], total: int | None, desc: str, progress: bool | None) -> Iterable[Any]:
    # progress=None lets tqdm decide (shown on a terminal, silent in logs and tests).
    return tqdm(items, total=total, desc=desc, unit="rec", disable=None if progress is None else not progress, leave=False)


def _collect(
    records: Iterable[tuple[int, Any]],
    parse: Any,
    source: str,
    strict: bool,
) -> tuple[list[Example], LoadReport]:
    examples: list[Example] = []
    report = LoadReport(source=source)
    for position, record in records:
        try:
            if isinstance(record, RecordError):
                raise record
            example = parse(record)
        except RecordError as err:
            report.errors.append((position, str(err)))
            continue
        example.source = source
        example.position = position
        examples.append(example)
    report.good = len(examples)
    if strict and report.errors:
        raise DataError(source, report.errors)
    return examples, report


# --------------------------------------------------------------------------- validation


def _maybe_json(value: Any, field_name: str) -> Any:
    # The published xlam-60k stores `tools` and `answers` as JSON-encoded strings.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise RecordError(f"{field_name}: string is not valid JSON ({err})") from None
    return value


def _parse_tools(raw: Any, convert: Any) -> list[Tool]:
    raw = _maybe_json(raw, "tools")
    if not isinstance(raw, list):
        raise RecordError(f"tools: expected a list, got {type(raw).__name__}")
    if not raw:
        raise RecordError("tools: empty list")
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise RecordError(f"tools[{i}]: expected an object, got {type(item).__name__}")
        try:
            tools.append(Tool.model_validate(convert(item)))
        except ValidationError as err:
            raise RecordError(f"tools[{i}]: {describe_validation_error(err)}") from None
        except (TypeError, ValueError) as err:
            raise RecordError(f"tools[{i}]: {err}") from None
    names = [tool.name for tool in tools]
    dupes = sorted({name for name in names if names.count(name) > 1})
    if dupes:
        raise RecordError(f"tools: duplicate function names {dupes}")
    return tools


def _check_answers(calls: list[Call], tools: list[Tool]) -> None:
    names = ", ".join(tool.name for tool in tools)
    for i, call in enumerate(calls):
        problems = validate_call(call, tools)
        if problems:
            detail = "; ".join(problems)
            if call.name not in {tool.name for tool in tools}:
                detail += f" (tools: {names})"
            raise RecordError(f"answers[{i}]: {detail}")


def _parse_query(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise RecordError("query: missing or not a non-blank string")
    return raw


# --------------------------------------------------------------------------- xlam


_XLAM_SCALARS = {
    "str": "string", "string": "string", "int": "integer", "integer": "integer",
    "float": "number", "number": "number", "bool": "boolean", "boolean": "boolean",
    "dict": "object", "object": "object", "list": "array", "array": "array",
    "tuple": "array", "set": "array",
}
_XLAM_GENERIC = re.compile(r"^(list|tuple|set|sequence|dict|mapping)\[(.*)\]$", re.IGNORECASE)


def _xlam_type(spec: str) -> dict[str, Any]:
    """Map an xlam/Python type string ('List[int]', 'str') to a JSON Schema node."""
    spec = spec.strip()
    generic = _XLAM_GENERIC.match(spec)
    if generic:
        outer, inner = generic.group(1).lower(), generic.group(2)
        if outer in ("dict", "mapping"):
            return {"type": "object"}
        # Tuple[int, int] -> items of the first type; Union/Any inside -> free items.
        first = inner.split(",")[0].strip() if outer == "tuple" else inner
        return {"type": "array", "items": _xlam_type(first)}
    mapped = _XLAM_SCALARS.get(spec.lower())
    # Union[...], Any, Callable, custom classes: no type, a free value.
    return {"type": mapped} if mapped else {}


def _is_xlam_dialect(params: Any) -> bool:
    # JSON Schema parameters have a string `type` or `properties`; the xlam dialect is a flat
    # map of parameter name -> spec dict (a parameter may itself be named "type").
    if not isinstance(params, dict) or not params:
        return False
    if isinstance(params.get("type"), str) or "properties" in params:
        return False
    return all(isinstance(v, dict) for v in params.values())


def convert_xlam_function(function: dict[str, Any]) -> dict[str, Any]:
    """Normalise one xlam tool to a shape `Tool` accepts (JSON Schema parameters)."""
    if "function" in function:
        function = {**function, "function": convert_xlam_function(function["function"])}
        return function
    params = function.get("parameters")
    if params is None or params == {}:
        # OpenAI allows a function without parameters; the schema wants an object.
        return {**function, "parameters": {"type": "object", "properties": {}}}
    if not _is_xlam_dialect(params):
        return function
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, spec in params.items():
        type_text = str(spec.get("type", ""))
        optional = bool(re.search(r",?\s*optional\s*$", type_text, re.IGNORECASE))
        type_text = re.sub(r",?\s*optional\s*$", "", type_text, flags=re.IGNORECASE)
        node = _xlam_type(type_text)
        if spec.get("description"):
            node["description"] = str(spec["description"])
        if "default" in spec:
            node["default"] = spec["default"]
        properties[name] = node
        # xlam marks many defaulted parameters as plain "str"; answers omit them, so a
        # parameter with a default is optional too.
        if not optional and "default" not in spec:
            required.append(name)
    converted: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        converted["required"] = required
    return {**function, "parameters": converted}


def _parse_calls(raw: Any, field_name: str) -> list[Call]:
    raw = _maybe_json(raw, field_name)
    if not isinstance(raw, list):
        raise RecordError(f"{field_name}: expected a list, got {type(raw).__name__}")
    calls: list[Call] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise RecordError(f"{field_name}[{i}]: expected an object, got {type(item).__name__}")
        if "function" in item and "name" not in item:  # OpenAI tool_call shape
            item = item["function"]
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise RecordError(f"{field_name}[{i}]: missing function name")
        arguments = _maybe_json(item.get("arguments", {}), f"{field_name}[{i}].arguments")
        if not isinstance(arguments, dict):
            raise RecordError(f"{field_name}[{i}].arguments: expected an object, got {type(arguments).__name__}")
        calls.append(Call(name=name, arguments=arguments))
    return calls


def parse_xlam_record(record: Any) -> Example:
    """Validate one xlam record; raises RecordError with the reason."""
    if not isinstance(record, dict):
        raise RecordError(f"record must be a JSON object, got {type(record).__name__}")
    query = _parse_query(record.get("query"))
    if "tools" not in record:
        raise RecordError("tools: missing")
    tools = _parse_tools(record["tools"], convert_xlam_function)
    if "answers" not in record:
        raise RecordError("answers: missing (use [] for a query no tool fits)")
    answers = _parse_calls(record["answers"], "answers")
    _check_answers(answers, tools)
    record_id = record.get("id")
    return Example(query=query, tools=tools, answers=answers, id=None if record_id is None else str(record_id))


def load_xlam(
    path: str | Path, *, strict: bool = False, progress: bool | None = None
) -> tuple[list[Example], LoadReport]:
    """Load an xlam-format JSON array or JSONL file; bad records are reported and skipped."""
    path = Path(path)
    records, total = _read_records(path)
    return _collect(_progress(records, total, f"load {path.name}", progress), parse_xlam_record, str(path), strict)


def write_xlam(path: str | Path, examples: Iterable[Example]) -> int:
    """Write examples as xlam JSONL (the format `load_xlam` and the service export share)."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example.to_xlam(), ensure_ascii=False) + "\n")
            count += 1
    return count


# --------------------------------------------------------------------------- BFCL


_BFCL_TYPES = {"dict": "object", "float": "number", "tuple": "array"}


def bfcl_to_json_schema(node: Any) -> Any:
    """Convert one BFCL schema node (and its children) to JSON Schema.

    `dict`->object, `float`->number, `tuple`->array, `any`->no type; everything else
    (enum, default, required, descriptions) is kept as is.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, str):
            if value == "any":
                continue
            out[key] = _BFCL_TYPES.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: bfcl_to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = bfcl_to_json_schema(value)
        elif key == "items" and isinstance(value, list):
            # Tuple-style positional items: JSON Schema subset has one item schema.
            out[key] = bfcl_to_json_schema(value[0]) if value else {}
        else:
            out[key] = value
    if out.get("type") == "array" and "enum" in out:
        # BFCL puts the allowed *item* values on the array node; JSON Schema puts them on items.
        items = dict(out.get("items") or {})
        items.setdefault("enum", out.pop("enum"))
        out["items"] = items
    return out


def _bfcl_function(function: dict[str, Any]) -> dict[str, Any]:
    if "parameters" in function:
        return {**function, "parameters": bfcl_to_json_schema(function["parameters"])}
    return function


def _bfcl_string_params(language: str) -> Any:
    """BFCL's own preparation of Java and JavaScript function docs (bfcl_eval.utils
    `_func_doc_language_specific_pre_processing`): every top-level parameter is a string holding
    the value in that language's syntax, its declared type moved into the description."""

    def convert(function: dict[str, Any]) -> dict[str, Any]:
        params = function.get("parameters")
        if not isinstance(params, dict) or not isinstance(params.get("properties"), dict):
            return _bfcl_function(function)
        properties = {}
        for name, node in params["properties"].items():
            if not isinstance(node, dict):
                properties[name] = node
                continue
            kind = node.get("type")
            note = (f" This parameter can be of any type of {language} object in string representation." if kind == "any"
                    else f" This is {language} {kind} type parameter in string representation.")
            properties[name] = {k: v for k, v in node.items() if k not in ("type", "items", "properties", "required")}
            properties[name]["description"] = str(node.get("description", "")) + note
            properties[name]["type"] = "string"
        return _bfcl_function({**function, "parameters": {**params, "properties": properties}})

    return convert


_OMIT = object()


def _pick_gold(options: Any, where: str) -> Any:
    """First acceptable value; "" first means the preferred answer omits the argument."""
    if not isinstance(options, list):
        raise RecordError(f"{where}: acceptable values must be a list, got {type(options).__name__}")
    if not options or options[0] == "":
        # [] (nothing acceptable listed) and "" first both mean: leave the argument out.
        return _OMIT
    return _resolve_nested(options[0], where)


def _resolve_nested(value: Any, where: str) -> Any:
    # Inside a chosen value, BFCL lists acceptable values again for every key of a nested
    # object (also for objects inside arrays); plain scalars and lists of scalars are literal.
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            if isinstance(sub, list):
                picked = _pick_gold(sub, f"{where}.{key}")
            else:
                picked = _resolve_nested(sub, f"{where}.{key}")
            if picked is not _OMIT:
                out[key] = picked
        return out
    if isinstance(value, list):
        return [_resolve_nested(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def _bfcl_gold(ground_truth: Any) -> list[Call]:
    if not isinstance(ground_truth, list):
        raise RecordError(f"ground_truth: expected a list, got {type(ground_truth).__name__}")
    calls: list[Call] = []
    for i, entry in enumerate(ground_truth):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise RecordError(f"ground_truth[{i}]: expected {{function_name: {{arg: [values]}}}}")
        (name, args), = entry.items()
        if not isinstance(args, dict):
            raise RecordError(f"ground_truth[{i}].{name}: arguments must be an object")
        arguments = {}
        for arg, options in args.items():
            value = _pick_gold(options, f"ground_truth[{i}].{name}.{arg}")
            if value is not _OMIT:
                arguments[arg] = value
        calls.append(Call(name=name, arguments=arguments))
    return calls


def _bfcl_query(question: Any) -> str:
    if not isinstance(question, list) or not question:
        raise RecordError("question: expected a non-empty list of turns")
    if len(question) > 1:
        raise RecordError(f"question: {len(question)} turns; only single-turn records are supported")
    turn = question[0]
    if not isinstance(turn, list):
        raise RecordError("question[0]: expected a list of messages")
    # The last user message is the request; system prompts and earlier chatter are context
    # the single-query cascade has no slot for.
    user = [m.get("content") for m in turn if isinstance(m, dict) and m.get("role") == "user"]
    if not user:
        raise RecordError("question[0]: no user message")
    return _parse_query(user[-1])


def parse_bfcl_record(record: Any, ground_truth: Any | None, language: str = "Python", check_answers: bool = True) -> Example:
    """One BFCL question record plus its ground truth (None = a no-call record). Java and
    JavaScript docs are prepared as BFCL prepares them for function-calling models.
    `check_answers=False` keeps a record whose gold does not fit its own schema (a handful in
    BFCL): evaluation runs every question and lets the official checker judge."""
    if not isinstance(record, dict):
        raise RecordError(f"record must be a JSON object, got {type(record).__name__}")
    record_id = None if record.get("id") is None else str(record["id"])
    try:
        query = _bfcl_query(record.get("question"))
        if "function" not in record:
            raise RecordError("function: missing")
        tools = _parse_tools(record["function"], _bfcl_function if language == "Python" else _bfcl_string_params(language))
        answers = [] if ground_truth is None else _bfcl_gold(ground_truth)
        if language != "Python":
            # Every parameter is a string in that language's syntax; BFCL's answers keep some
            # values native (true, lists, maps). As text they fit the schema; BFCL scoring never
            # reads these golds (its checker gets the raw answers), retrieval only their names.
            answers = [Call(name=c.name, arguments={k: v if isinstance(v, str) else json.dumps(v) for k, v in c.arguments.items()})
                       for c in answers]
        if check_answers:
            _check_answers(answers, tools)
    except RecordError as err:
        # BFCL records are known by id; say it so the report can be checked against the file.
        raise RecordError(f"id {record_id}: {err}" if record_id else str(err)) from None
    return Example(query=query, tools=tools, answers=answers, id=record_id)


def load_bfcl(
    question_path: str | Path,
    answer_path: str | Path | None = None,
    *,
    no_call: bool = False,
    strict: bool = False,
    progress: bool | None = None,
    language: str = "Python",
    check_answers: bool = True,
) -> tuple[list[Example], LoadReport]:
    """Load a BFCL question file with its possible_answer file (`language`: Python, Java or
    JavaScript — BFCL's simple_java / simple_javascript).

    Without an answer file the gold calls are unknown, so the caller must say the file is
    a no-call (irrelevance) category with `no_call=True`; answers are then [].
    """
    question_path = Path(question_path)
    if answer_path is None and not no_call:
        raise ValueError(f"{question_path}: no possible_answer file given; pass no_call=True for irrelevance data")
    answers: dict[str, Any] = {}
    if answer_path is not None:
        answer_records, _ = _read_records(Path(answer_path))
        for _position, record in answer_records:
            if isinstance(record, dict) and "id" in record:
                answers[str(record["id"])] = record.get("ground_truth")
            # An unreadable answer line surfaces as "no possible answer" on its question.

    def parse(record: Any) -> Example:
        if no_call:
            return parse_bfcl_record(record, None, language, check_answers)
        record_id = str(record.get("id")) if isinstance(record, dict) else None
        if record_id not in answers:
            raise RecordError(f"id {record_id!r}: no possible answer")
        return parse_bfcl_record(record, answers[record_id], language, check_answers)

    records, total = _read_records(question_path)
    return _collect(_progress(records, total, f"load {question_path.name}", progress), parse, str(question_path), strict)


# Short names used in papers and the BFCL CLI -> file stems of the v4 data.
_BFCL_ALIASES = {"simple": "simple_python", "java": "simple_java", "javascript": "simple_javascript"}
# Categories whose records are conversations or agent traces, not one query -> calls.
_BFCL_UNSUPPORTED = ("multi_turn", "memory", "web_search", "format_sensitivity")


def bfcl_data_dir() -> Path:
    """Where the installed `bfcl_eval` package keeps its data files (no heavy import)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("bfcl_eval is not installed (pip install 'hyfunc[bfcl]')")
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if data.is_dir():
            return data
    raise FileNotFoundError(f"bfcl_eval has no data directory under {list(spec.submodule_search_locations)}")


def bfcl_language(category: str) -> str:
    """The language a BFCL category's function docs are written in."""
    stem = _BFCL_ALIASES.get(category, category)
    if stem.endswith("javascript"):
        return "JavaScript"
    if stem.endswith("java"):
        return "Java"
    return "Python"


def bfcl_non_live_categories() -> list[str]:
    """BFCL's non-live single-turn categories, as bfcl_eval lists them (its NON_LIVE_CATEGORY)."""
    try:
        from bfcl_eval.constants.category_mapping import NON_LIVE_CATEGORY
    except ImportError:  # an older or partial install: the v4 list
        NON_LIVE_CATEGORY = ["simple_python", "simple_java", "simple_javascript", "multiple", "parallel",
                             "parallel_multiple", "irrelevance"]
    available = set(bfcl_categories())
    return [c for c in NON_LIVE_CATEGORY if c in available]


def bfcl_categories() -> list[str]:
    """Single-turn categories whose question files ship with bfcl_eval."""
    names = sorted(p.stem.removeprefix("BFCL_v4_") for p in bfcl_data_dir().glob("BFCL_v4_*.json"))
    return [n for n in names if not n.startswith(_BFCL_UNSUPPORTED)]


def load_bfcl_category(
    name: str, *, strict: bool = False, progress: bool | None = None, check_answers: bool = True
) -> tuple[list[Example], LoadReport]:
    """Load one shipped BFCL v4 category, e.g. "simple", "parallel_multiple", "irrelevance"."""
    stem = _BFCL_ALIASES.get(name, name)
    if stem.startswith(_BFCL_UNSUPPORTED):
        raise ValueError(f"BFCL category {name!r} is multi-turn or agentic; only single-turn categories load")
    data = bfcl_data_dir()
    question = data / f"BFCL_v4_{stem}.json"
    if not question.is_file():
        raise FileNotFoundError(f"no BFCL category {name!r}; available: {', '.join(bfcl_categories())}")
    answer = data / "possible_answer" / f"BFCL_v4_{stem}.json"
    language = bfcl_language(stem)
    if answer.is_file():
        return load_bfcl(question, answer, strict=strict, progress=progress, language=language, check_answers=check_answers)
    if "irrelevance" in stem:
        return load_bfcl(question, no_call=True, strict=strict, progress=progress, language=language)
    raise ValueError(f"BFCL category {name!r} ships no possible answers and is not a no-call category")
