"""Seal-Tools (github.com/fairyshine/Seal-Tools, Apache-2.0): a 4,076-tool library and
query -> calls splits, read from a local directory and turned into `Example`s.

Where the data comes from (it is not on any package index):

- `--data DIR` or `$HYFUNC_SEAL_DIR`: a checkout's `Seal-Tools_Dataset/` directory
  (`tool.jsonl`, `dev.jsonl`, `test_in_domain.jsonl`, `test_out_domain.jsonl`, optionally
  `dataset_for_finetune/`);
- otherwise `data/seal/` in this repository: the `test_in_domain` split verbatim, the tools it
  references (`tool_subset_test_in_domain.jsonl`, lines of `tool.jsonl` verbatim), the five
  candidate tools the Seal-Tools authors give each test question (`candidates_test_in_domain.json`,
  the `api_name`s of `dataset_for_finetune/test_in_domain.json`) and the licence.

Records look like `{"id", "query", "calling": [{"api", "parameters", "responses"}]}`; tools like
`{"api_name", "api_description", "field", "parameters": {name: {"type": "str"|"int"|"float"|"bool",
"description"}}, "required", "responses"}`. Gold values are mostly strings even for numeric
parameters ("2" for an int); they are converted to the declared type where that is lossless.
Some calls of the hard records take an earlier call's output ("API_call_0") as a value: such
records are flagged `nested` (the cascade has no way to refer to an output) and never trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hyfunc.data.loaders import Example, LoadReport, RecordError
from hyfunc.jsonl import jsonl_records
from hyfunc.schema import Call, Tool, describe_validation_error, validate_call

SEAL_URL = "https://github.com/fairyshine/Seal-Tools"
SEAL_LICENCE = "Apache-2.0"
SEAL_COMMIT = "ce753ecd60ed08dd376984035de531ab8421f1c6"  # the snapshot data/seal/ was taken from
VENDORED_DIR = Path(__file__).resolve().parents[2] / "data" / "seal"
SPLITS = ("dev", "test_in_domain", "test_out_domain")
N_CANDIDATES = 5  # what the Seal-Tools authors give the model per question

_TYPES = {"str": "string", "string": "string", "int": "integer", "integer": "integer",
          "float": "number", "number": "number", "bool": "boolean", "boolean": "boolean",
          "list": "array", "array": "array", "dict": "object", "object": "object"}
_NESTED = re.compile(r"^API_call_\d+$")


class SealDataMissing(FileNotFoundError):
    """No Seal-Tools data where we looked; the message says how to get it."""


def seal_data_dir(data: str | Path | None = None, split: str | None = None) -> Path:
    """`data`, else $HYFUNC_SEAL_DIR, else the vendored data/seal/ (which holds test_in_domain only)."""
    chosen = data or os.environ.get("HYFUNC_SEAL_DIR")
    directory = Path(chosen) if chosen else VENDORED_DIR
    if not directory.is_dir():
        raise SealDataMissing(f"Seal-Tools data directory {directory} does not exist; {_HOW_TO_GET}")
    if split is not None and not (directory / f"{split}.jsonl").is_file():
        raise SealDataMissing(f"{directory} has no {split}.jsonl; {_HOW_TO_GET}")
    return directory


_HOW_TO_GET = (
    f"get it with `git clone {SEAL_URL}` and pass --data Seal-Tools/Seal-Tools_Dataset "
    "(or set HYFUNC_SEAL_DIR); this repository ships only test_in_domain under data/seal/"
)


# --------------------------------------------------------------------------- tools


def seal_tool(record: dict[str, Any]) -> Tool:
    """One tool.jsonl line -> an OpenAI-format Tool (raises RecordError naming the problem)."""
    if not isinstance(record, dict) or not isinstance(record.get("api_name"), str):
        raise RecordError("api_name: missing")
    params = record.get("parameters") or {}
    if not isinstance(params, dict):
        raise RecordError(f"{record['api_name']}: parameters must be an object")
    properties: dict[str, Any] = {}
    for name, spec in params.items():
        if not isinstance(spec, dict):
            raise RecordError(f"{record['api_name']}.parameters.{name}: expected an object")
        node: dict[str, Any] = {}
        kind = _TYPES.get(str(spec.get("type", "")).strip().lower())
        if kind:
            node["type"] = kind
        if kind == "array":
            node["items"] = {"type": "string"}
        description = str(spec.get("description", "")).strip()
        example = spec.get("example", spec.get("examples"))
        if example not in (None, "", []) and "e.g." not in description:
            # Examples are what the tool's author thought a value looks like: keep them in view.
            description += f" (e.g., {example if isinstance(example, str) else json.dumps(example)})"
        if description:
            node["description"] = description
        if "default" in spec:
            node["default"] = spec["default"]
        properties[name] = node
    required = [r for r in record.get("required") or [] if r in properties]
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    try:
        return Tool.model_validate({"type": "function", "function": {
            "name": record["api_name"], "description": str(record.get("api_description", "")), "parameters": schema}})
    except ValidationError as err:
        raise RecordError(f"{record['api_name']}: {describe_validation_error(err)}") from None


@dataclass
class SealLibrary:
    """The tool library: tools by name, each tool's field (domain), and what failed to convert."""

    tools: dict[str, Tool]
    fields: dict[str, str]
    report: LoadReport
    _groups: dict[str, list[str]] | None = None
    _names: list[str] | None = None

    def by_field(self) -> dict[str, list[str]]:
        if self._groups is None:
            self._groups = {}
            for name, tool_field in sorted(self.fields.items()):
                self._groups.setdefault(tool_field, []).append(name)
        return self._groups

    def names(self) -> list[str]:
        if self._names is None:
            self._names = sorted(self.tools)
        return self._names


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    for number, value in jsonl_records(path):
        yield number, RecordError(f"invalid JSON: {value}") if isinstance(value, json.JSONDecodeError) else value


def load_seal_library(directory: Path) -> SealLibrary:
    """`tool.jsonl`, or every `tool*.jsonl` (the vendored subset) when it is absent."""
    paths = [directory / "tool.jsonl"] if (directory / "tool.jsonl").is_file() else sorted(directory.glob("tool*.jsonl"))
    if not paths:
        raise SealDataMissing(f"{directory} has no tool.jsonl; {_HOW_TO_GET}")
    tools: dict[str, Tool] = {}
    fields: dict[str, str] = {}
    report = LoadReport(source=", ".join(str(p) for p in paths))
    for path in paths:
        for number, record in _jsonl(path):
            try:
                if isinstance(record, RecordError):
                    raise record
                tool = seal_tool(record)
            except RecordError as err:
                report.errors.append((number, str(err)))
                continue
            tools[tool.name] = tool
            fields[tool.name] = str(record.get("field", ""))
    report.good = len(tools)
    return SealLibrary(tools, fields, report)


# --------------------------------------------------------------------------- records


def _coerce(value: Any, kind: str | None) -> Any:
    """A gold value in its declared type where the conversion loses nothing ("2" -> 2)."""
    if isinstance(value, str):
        text = value.strip()
        if kind == "integer" and re.fullmatch(r"[-+]?\d+", text):
            return int(text)
        if kind == "number" and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
            number = float(text)
            return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
        if kind == "boolean" and text.lower() in ("true", "false"):
            return text.lower() == "true"
    if kind == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return value
    return value


@dataclass
class SealExample(Example):
    """An Example plus what Seal-Tools knows about it."""

    nested: bool = False  # a value is an earlier call's output ("API_call_0")
    difficulty: str = ""  # "easy" (one call) or "difficult" (several), from the id
    gold_in_candidates: bool = True
    problems: list[str] = field(default_factory=list)  # gold values that do not fit the schema


def _gold(record: dict[str, Any], library: SealLibrary) -> tuple[list[Call], bool]:
    calling = record.get("calling")
    if not isinstance(calling, list) or not calling:
        raise RecordError("calling: expected a non-empty list")
    calls, nested = [], False
    for i, item in enumerate(calling):
        if not isinstance(item, dict) or not isinstance(item.get("api"), str):
            raise RecordError(f"calling[{i}]: expected {{api, parameters}}")
        tool = library.tools.get(item["api"])
        if tool is None:
            raise RecordError(f"calling[{i}]: unknown api {item['api']!r} (not in the tool library)")
        arguments = item.get("parameters") or {}
        if not isinstance(arguments, dict):
            raise RecordError(f"calling[{i}].parameters: expected an object")
        props = tool.function.parameters.properties or {}
        out = {}
        for name, value in arguments.items():
            nested = nested or (isinstance(value, str) and bool(_NESTED.match(value.strip())))
            out[name] = _coerce(value, props[name].type if name in props else None)
        calls.append(Call(name=tool.name, arguments=out))
    return calls, nested


def _seed(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def distractors(library: SealLibrary, keep: list[str], n: int, key: str, exclude: set[str] | None = None) -> list[str]:
    """`keep` plus tools of the same fields, then of any field, up to `n` names; deterministic in `key`."""
    rng = random.Random(_seed(key))
    chosen = list(dict.fromkeys(keep))
    banned = set(chosen) | (exclude or set())
    groups = library.by_field()
    same = sorted({name for k in keep for name in groups.get(library.fields.get(k, ""), [])} - banned)
    rng.shuffle(same)
    everyone = library.names()
    # a few more than needed from the whole library, so banned or repeated draws still leave n
    extra = rng.sample(everyone, min(len(everyone), 2 * n + len(banned)))
    for name in same + extra:
        if len(chosen) >= n:
            break
        if name not in banned and name not in chosen:
            chosen.append(name)
    return chosen


def _candidate_lists(directory: Path, split: str) -> dict[str, list[str]]:
    """The Seal-Tools authors' candidate tools per question, where the data has them."""
    derived = directory / f"candidates_{split}.json"
    if derived.is_file():
        return json.loads(derived.read_text(encoding="utf-8"))
    finetune = directory / "dataset_for_finetune" / f"{split}.json"
    if finetune.is_file():
        out = {}
        for record in json.loads(finetune.read_text(encoding="utf-8")):
            prompt = record["conversations"][0]["value"]
            out[str(record["id"])] = re.findall(r"'api_name': '([^']+)'", prompt)
        return out
    return {}


def load_seal_split(
    split: str,
    data: str | Path | None = None,
    *,
    library: SealLibrary | None = None,
    check_answers: bool = True,
    n_candidates: int = N_CANDIDATES,
) -> tuple[list[SealExample], LoadReport]:
    """One split as SealExamples with their candidate tools.

    Candidates are the authors' five per question when the data has them (`candidates_<split>.json`
    or `dataset_for_finetune/<split>.json`): a model is scored in their setting, where in 2 of 700
    test_in_domain questions a gold tool is missing from the list. Otherwise the gold tools plus
    tools of the same field, then any field, up to `n_candidates`, chosen deterministically per id.
    `check_answers=False` keeps records whose gold does not fit the schema (evaluation); training
    keeps only records whose gold validates.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown Seal-Tools split {split!r}; expected one of {', '.join(SPLITS)}")
    directory = seal_data_dir(data, split)
    library = library or load_seal_library(directory)
    given = _candidate_lists(directory, split)
    path = directory / f"{split}.jsonl"
    report = LoadReport(source=str(path))
    examples: list[SealExample] = []
    for number, record in _jsonl(path):
        try:
            if isinstance(record, RecordError):
                raise record
            if not isinstance(record, dict):
                raise RecordError("record must be a JSON object")
            record_id = str(record.get("id", f"{split}-{number}"))
            query = record.get("query")
            if not isinstance(query, str) or not query.strip():
                raise RecordError(f"id {record_id}: query missing")
            try:
                gold, nested = _gold(record, library)
            except RecordError as err:
                raise RecordError(f"id {record_id}: {err}") from None
            names = given.get(record_id) or distractors(library, [c.name for c in gold], n_candidates, record_id)
            missing_tools = [n for n in names if n not in library.tools]
            if missing_tools:
                raise RecordError(f"id {record_id}: candidate tools {missing_tools} not in the tool library")
            tools = [library.tools[n] for n in names]
            problems = [p for c in gold for p in validate_call(c, tools)] if all(c.name in names for c in gold) else []
            if check_answers and (problems or not all(c.name in names for c in gold)):
                raise RecordError(f"id {record_id}: " + ("; ".join(problems) or "a gold tool is not among the candidates"))
        except RecordError as err:
            report.errors.append((number, str(err)))
            continue
        examples.append(SealExample(
            query=query, tools=tools, answers=gold, source=str(path), position=number, id=record_id,
            nested=nested, difficulty="easy" if "-easy-" in record_id else "difficult",
            gold_in_candidates=all(c.name in names for c in gold), problems=problems,
        ))
    report.good = len(examples)
    return examples, report


def provenance(directory: Path, **extra: Any) -> dict[str, Any]:
    """What a model card records about Seal-Tools data used for training."""
    return {"name": "Seal-Tools", "url": SEAL_URL, "licence": SEAL_LICENCE,
            "snapshot": SEAL_COMMIT if directory.resolve() == VENDORED_DIR.resolve() else f"local copy {directory}",
            **extra}


# --------------------------------------------------------------------------- training data


def _norm_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _norm_text(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


@dataclass
class BfclExclusions:
    """Every function name and question in the installed bfcl_eval's data files: BFCL is evaluation
    only, so training data that shares a function name (compared without case or separators) or a
    question (compared by its words) with any BFCL category is dropped."""

    names: set[str]
    questions: set[str]

    @classmethod
    def load(cls) -> BfclExclusions:
        from hyfunc.data.loaders import bfcl_data_dir

        names: set[str] = set()
        questions: set[str] = set()
        data = bfcl_data_dir()
        for path in sorted(data.rglob("*.json")):
            if "possible_answer" in path.parts:
                continue
            for _number, record in _jsonl(path) if _is_jsonl(path) else []:
                if isinstance(record, dict):
                    _collect_bfcl(record, names, questions)
        for path in sorted((data / "multi_turn_func_doc").glob("*.json")) if (data / "multi_turn_func_doc").is_dir() else []:
            for _number, record in _jsonl(path):
                if isinstance(record, dict) and isinstance(record.get("name"), str):
                    names.add(_norm_name(record["name"]))
        return cls(names, questions)

    def tool_allowed(self, name: str) -> bool:
        return _norm_name(name) not in self.names

    def query_allowed(self, query: str) -> bool:
        return _norm_text(query) not in self.questions


def _is_jsonl(path: Path) -> bool:
    with path.open(encoding="utf-8") as handle:
        return handle.read(1) == "{"


def _collect_bfcl(record: dict[str, Any], names: set[str], questions: set[str]) -> None:
    for function in record.get("function") or []:
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(_norm_name(function["name"]))
    for turn in record.get("question") or []:
        for message in turn if isinstance(turn, list) else [turn]:
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                questions.add(_norm_text(message["content"]))


_EXAMPLES = re.compile(r"\(\s*e\.?g\.?,?\s*([^)]*)\)", re.IGNORECASE)
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def _phrase(name: str) -> str:
    """A parameter name as words: check_in_date -> check in date, postId -> post id."""
    return " ".join(w.lower() for w in _WORDS.findall(name)) or name


def _described_values(description: str) -> list[str]:
    """Values a tool's author listed as examples: "(e.g., DNA, fingerprints, blood)"."""
    out = []
    for group in _EXAMPLES.findall(description or ""):
        for part in re.split(r",|\bor\b|/", group):
            value = part.strip().strip("'\"").strip()
            if value and len(value) <= 40 and value.lower() not in ("etc", "etc."):
                out.append(value)
    return out


def _random_value(kind: str | None, name: str, rng: random.Random) -> Any:
    if kind == "integer":
        return rng.choice([rng.randint(1, 10), rng.randint(10, 100), rng.randint(100, 5000)])
    if kind == "number":
        return round(rng.uniform(0.5, 500), rng.choice([1, 2]))
    if kind == "boolean":
        return rng.random() < 0.5
    if re.search(r"(^|_)(id|code|number|key|token)$|Id$", name):
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(6, 10)))
    return None


def _value(tool: Tool, name: str, seen: dict[tuple[str, str], list[Any]], rng: random.Random) -> Any:
    node = (tool.function.parameters.properties or {})[name]
    pool = [_coerce(v, node.type) for v in _described_values(node.description or "")]
    pool = [v for v in pool if node.type in (None, "string") or not isinstance(v, str)]
    pool += seen.get((tool.name, name), [])
    if node.enum:
        pool = list(node.enum)
    if pool and rng.random() < 0.85:
        return rng.choice(pool)
    return _random_value(node.type, name, rng)


def _mention(name: str, value: Any, rng: random.Random) -> str:
    words = _phrase(name)
    if isinstance(value, bool):
        return f"{words} {'on' if value else 'off'}" if rng.random() < 0.5 else f"{words} set to {str(value).lower()}"
    text = str(value)
    if isinstance(value, str) and (" " in text or rng.random() < 0.3):
        text = f'"{text}"'
    return rng.choice([f"{words} {text}", f"{text} as the {words}", f"{words} of {text}", f"the {words} {text}"])


_OPENERS = ("{Desc}", "Please {desc}", "I need to {desc}", "Could you {desc}", "Help me {desc}", "{desc}")


def _sentence(tool: Tool, arguments: dict[str, Any], rng: random.Random, listed: str | None = None) -> str:
    """A query for ``arguments``; ``listed`` (a mention of several values, one per call) goes last."""
    description = (tool.function.description or _phrase(tool.name)).strip().rstrip(".")
    desc = description[0].lower() + description[1:] if description[:2] != description[:2].upper() else description
    opener = rng.choice(_OPENERS).format(Desc=description[0].upper() + description[1:], desc=desc)
    mentions = [_mention(k, v, rng) for k, v in arguments.items()]
    if listed:
        mentions.append(listed)
    if not mentions:
        body = ""
    elif len(mentions) == 1:
        body = rng.choice([" with ", " for ", ", ", " using "]) + mentions[0]
    else:
        body = rng.choice([" with ", ": ", ", using "]) + ", ".join(mentions[:-1]) + " and " + mentions[-1]
    end = "?" if opener.startswith("Could") else "."
    return opener + body + end


def generate_call(tool: Tool, seen: dict[tuple[str, str], list[Any]], rng: random.Random) -> tuple[str, Call] | None:
    """One query for one tool, written from its description, its parameters' names and the example
    values in their descriptions (plus values seen in the dev split); None when a required value
    has nothing to come from. Every value appears verbatim in the query (extractive)."""
    props = tool.function.parameters.properties or {}
    required = set(tool.function.parameters.required or [])
    arguments: dict[str, Any] = {}
    for name in props:
        if name not in required and rng.random() < 0.6:
            continue
        value = _value(tool, name, seen, rng)
        if value is None:
            if name in required:
                return None
            continue
        arguments[name] = value
    call = Call(name=tool.name, arguments=arguments)
    if validate_call(call, [tool]):
        return None
    return _sentence(tool, arguments, rng), call


def _listed_values(name: str, values: list[Any], rng: random.Random) -> str:
    """Several values of one parameter in one phrase: "city Paris, Oslo and Rome"."""
    texts = [str(v).lower() if isinstance(v, bool) else (f'"{v}"' if isinstance(v, str) and " " in v else str(v))
             for v in values]
    items = ", ".join(texts[:-1]) + " and " + texts[-1]
    return f"{_phrase(name)} {items}" if len(values) < 3 or rng.random() < 0.5 else f"each of the {_phrase(name)}s {items}"


def generate_listed_calls(tool: Tool, wanted: int, seen: dict[tuple[str, str], list[Any]],
                          rng: random.Random) -> tuple[str, list[Call]] | None:
    """A parallel query in one sentence: `wanted` calls of one tool that differ in one parameter,
    its values listed ("the area of circles with radius 3, 5 and 7"), the other values shared.
    None when no parameter gets `wanted` distinct values."""
    made = generate_call(tool, seen, rng)
    if made is None:
        return None
    _query, base = made
    props = tool.function.parameters.properties or {}
    varying = [n for n, v in base.arguments.items() if not isinstance(v, bool) and not props[n].enum]
    if not varying:
        return None
    name = rng.choice(varying)
    values = [base.arguments[name]]
    for _ in range(10 * wanted):
        if len(values) >= wanted:
            break
        value = _value(tool, name, seen, rng)
        if value is not None and str(value) not in {str(v) for v in values}:  # distinct as written in the query
            values.append(value)
    if len(values) < wanted:
        return None
    calls = [Call(name=tool.name, arguments={**base.arguments, name: v}) for v in values]
    if any(validate_call(c, [tool]) for c in calls):
        return None
    shared = {k: v for k, v in base.arguments.items() if k != name}
    return _sentence(tool, shared, rng, listed=_listed_values(name, values, rng)), calls


_JOINERS = (" Also, ", " Then ", " After that, ", " Additionally, ", " And ")
# How many calls a generated call query asks for (weights): BFCL-style parallel questions ask for
# 2-4 calls, often of one tool with other values ("weather in Paris and in Oslo"); a model trained
# on one- and two-call queries only stops too early.
CALL_COUNT_WEIGHTS = {1: 0.55, 2: 0.25, 3: 0.12, 4: 0.08}
SAME_TOOL_SHARE = 0.5  # of the multi-call queries: every call to the same tool, with other values
# Of those same-tool queries: one sentence listing one parameter's values ("for Paris, Oslo and
# Rome") instead of one sentence per call, so the count is read from a list, not from joined clauses.
LISTED_SHARE = 0.5


def generate_examples(
    library: SealLibrary,
    per_tool: int = 2,
    seen: dict[tuple[str, str], list[Any]] | None = None,
    two_call_share: float | None = None,
    no_call_share: float = 0.1,
    n_candidates: int = N_CANDIDATES,
    seed: int = 0,
    exclusions: BfclExclusions | None = None,
    exclude_tools: set[str] | None = None,
    call_counts: dict[int, float] | None = None,
) -> list[Example]:
    """Queries generated from the tool library: per tool `per_tool` call queries of 1-4 calls
    (`call_counts` weights; half the multi-call ones repeat one tool with other values), plus
    no-call queries (a query whose tool is not among the candidates: what the relevance gate and
    the LMS's no-call decision learn from). `exclude_tools` never appear, as gold or candidate
    (e.g. the tools of an evaluation split). `two_call_share` (older callers): one- and two-call
    queries only, that share of them with two calls."""
    rng = random.Random(seed)
    seen = seen or {}
    banned = exclude_tools or set()
    if two_call_share is not None:
        call_counts = {1: 1.0 - two_call_share, 2: two_call_share}
    counts = call_counts or CALL_COUNT_WEIGHTS
    names = [n for n in sorted(library.tools)
             if n not in banned and (exclusions is None or exclusions.tool_allowed(n))]
    singles: list[tuple[str, Call]] = []
    for name in names:
        for _ in range(per_tool):
            made = generate_call(library.tools[name], seen, rng)
            if made:
                singles.append(made)
    out: list[Example] = []
    allowed = set(names)
    for i, (query, call) in enumerate(singles):
        key = f"gen-{seed}-{i}"
        if rng.random() < no_call_share:
            tool_field = library.fields.get(call.name, "")
            cands = [n for n in rng.sample(names, min(len(names), 4 * n_candidates))
                     if library.fields.get(n, "") != tool_field][:n_candidates]
            out.append(Example(query=query, tools=[library.tools[n] for n in cands], answers=[], id=key))
            continue
        wanted = rng.choices(list(counts), weights=list(counts.values()))[0]
        calls = [call]
        same_tool = wanted > 1 and rng.random() < SAME_TOOL_SHARE
        listed = generate_listed_calls(library.tools[call.name], wanted, seen, rng) \
            if same_tool and rng.random() < LISTED_SHARE else None
        if listed is not None:
            query, calls = listed
        for _ in range(30):  # draws that repeat a call or its tool (when unwanted) are retried
            if len(calls) >= wanted:
                break
            if same_tool:
                made = generate_call(library.tools[call.name], seen, rng)
                if made is None:
                    break
                other_query, other = made
            else:
                other_query, other = singles[rng.randrange(len(singles))]
                if any(c.name == other.name for c in calls):
                    continue
            if not other.arguments or any(c == other for c in calls):
                continue
            query = query + rng.choice(_JOINERS) + other_query[0].lower() + other_query[1:]
            calls.append(other)
        cands = [n for n in distractors(library, [c.name for c in calls], n_candidates, key, exclude=banned)
                 if n in allowed]
        rng.shuffle(cands)
        out.append(Example(query=query, tools=[library.tools[n] for n in cands], answers=calls, id=key))
    if exclusions is not None:
        out = [ex for ex in out if exclusions.query_allowed(ex.query)]
    return out


def evaluation_holdouts(directory: Path) -> tuple[set[str], set[str]]:
    """What Seal-Tools training must never see: the test splits' queries (by their words) and the
    tools of `test_out_domain` (that split measures tools never seen in training)."""
    queries: set[str] = set()
    ood_tools: set[str] = set()
    for split in ("test_in_domain", "test_out_domain"):
        path = directory / f"{split}.jsonl"
        if not path.is_file():
            raise SealDataMissing(
                f"{directory} has no {split}.jsonl: without it training cannot keep that evaluation "
                f"split's queries{' and tools' if split == 'test_out_domain' else ''} out; {_HOW_TO_GET}"
            )
        for _number, record in _jsonl(path):
            if not isinstance(record, dict):
                continue
            if isinstance(record.get("query"), str):
                queries.add(_norm_text(record["query"]))
            if split == "test_out_domain":
                for item in record.get("calling") or []:
                    if isinstance(item, dict) and isinstance(item.get("api"), str):
                        ood_tools.add(item["api"])
    return queries, ood_tools


def training_data_dir(data: str | Path | None = None) -> Path:
    """The Seal-Tools directory training reads: `data` or $HYFUNC_SEAL_DIR, never the vendored
    `data/seal/` (it holds only the test_in_domain split that `hyfunc eval seal` scores)."""
    chosen = data or os.environ.get("HYFUNC_SEAL_DIR")
    if not chosen:
        raise SealDataMissing("Seal-Tools training data needs --data DIR (or HYFUNC_SEAL_DIR): the repository's "
                              f"data/seal/ is an evaluation split and is never trained on; {_HOW_TO_GET}")
    directory = seal_data_dir(chosen)
    if directory.resolve() == VENDORED_DIR.resolve():
        raise SealDataMissing(f"{directory} is the vendored evaluation split (test_in_domain) and is never trained on; "
                              f"{_HOW_TO_GET}")
    for name in ("tool.jsonl", "dev.jsonl"):
        if not (directory / name).is_file():
            raise SealDataMissing(f"{directory} has no {name}; {_HOW_TO_GET}")
    return directory


def seal_training_examples(
    data: str | Path | None = None,
    per_tool: int = 2,
    seed: int = 0,
    exclusions: BfclExclusions | None = None,
    call_counts: dict[int, float] | None = None,
) -> tuple[list[Example], dict[str, Any]]:
    """Training data from Seal-Tools: the dev split (records whose gold fits the schema and uses
    no earlier call's output) and queries generated from the tool library; with BFCL's function
    names and questions, the test splits' queries and the out-of-domain test tools excluded.
    Returns the examples and their provenance for the model card."""
    directory = training_data_dir(data)
    exclusions = exclusions if exclusions is not None else BfclExclusions.load()
    library = load_seal_library(directory)
    test_queries, ood_tools = evaluation_holdouts(directory)

    def clean(ex: Example) -> bool:
        # An out-of-domain test tool among the distractors is dropped from the candidates; as gold,
        # the record goes.
        if any(c.name in ood_tools for c in ex.answers):
            return False
        ex.tools = [t for t in ex.tools if t.name not in ood_tools]
        return (exclusions.query_allowed(ex.query) and _norm_text(ex.query) not in test_queries
                and all(exclusions.tool_allowed(t.name) for t in ex.tools))

    dev, _report = load_seal_split("dev", directory, library=library)
    dev = [ex for ex in dev if not ex.nested and clean(ex)]
    seen: dict[tuple[str, str], list[Any]] = {}
    for ex in dev:
        for call in ex.answers:
            for name, value in call.arguments.items():
                seen.setdefault((call.name, name), []).append(value)
    generated = generate_examples(library, per_tool=per_tool, seen=seen, seed=seed, exclusions=exclusions,
                                  exclude_tools=ood_tools, call_counts=call_counts)
    generated = [ex for ex in generated if clean(ex)]
    examples = [*dev, *generated]
    info = provenance(directory, splits=["dev"], dev_examples=len(dev),
                      generated_examples=len(generated), tools=len(library.tools) - len(ood_tools),
                      excluded_out_of_domain_tools=len(ood_tools), excluded_test_queries=len(test_queries),
                      generator="hyfunc.data.seal_tools.generate_examples", seed=seed, per_tool=per_tool,
                      bfcl_excluded=True)
    return examples, info


def write_training_data(out: str | Path, data: str | Path | None = None, per_tool: int = 2, seed: int = 0) -> dict[str, Any]:
    """Write the training examples as xlam JSONL (what `load_xlam` and training read) and their
    provenance next to it (`<out>.provenance.json`, the model card's data fields)."""
    from hyfunc.data.loaders import write_xlam

    examples, info = seal_training_examples(data, per_tool=per_tool, seed=seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info["records"] = write_xlam(out, examples)
    Path(f"{out}.provenance.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    """`python -m hyfunc.data.seal_tools --out FILE.jsonl [--data DIR]`."""
    import argparse

    parser = argparse.ArgumentParser(description="Seal-Tools training data (xlam JSONL) with provenance; BFCL excluded")
    parser.add_argument("--out", required=True, help="xlam JSONL to write")
    parser.add_argument("--data", help="Seal-Tools_Dataset directory with tool.jsonl, dev.jsonl and the test splits "
                        "(default: $HYFUNC_SEAL_DIR; the vendored data/seal/ is an evaluation split and is refused)")
    parser.add_argument("--per-tool", type=int, default=2, help="generated queries per tool")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        info = write_training_data(args.out, args.data, args.per_tool, args.seed)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
