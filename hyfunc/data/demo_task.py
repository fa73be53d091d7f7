"""The bundled demo task: a 49-tool library and a seeded generator of queries with gold calls.

The library (hyfunc/demo/tools.json) and the phrasings (hyfunc/demo/phrasings.yaml) are
data; this module only turns them into `Example`s. Train and held-out splits share no
query template, optional phrase, joiner, no-call query or pool value, so a held-out score
measures unseen text. Every gold value can be copied from the query: strings appear
verbatim, numbers as digits, enum values verbatim or through a fixed phrase mapping.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

from hyfunc.data.loaders import Example
from hyfunc.schema import Call, ParamSchema, Tool

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"
_SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")
_MARK = "{+}"

# Mix of query kinds. No-call queries are the cascade's relevance-gate training signal.
P_NO_CALL = 0.12
P_TWO_CALLS = 0.2
P_SAME_TOOL_TWICE = 0.3  # of the two-call queries
P_OPTIONAL = 0.4  # each optional phrase group independently


# --------------------------------------------------------------------------- library


@lru_cache(maxsize=1)
def _library() -> tuple[dict[str, Tool], dict[str, str]]:
    raw = json.loads((DEMO_DIR / "tools.json").read_text(encoding="utf-8"))
    tools = {item["function"]["name"]: Tool.model_validate(item) for item in raw}
    domains = {item["function"]["name"]: item["domain"] for item in raw}
    return tools, domains


def demo_tools() -> list[Tool]:
    """The demo tool library, in file order."""
    return list(_library()[0].values())


def demo_domains() -> dict[str, str]:
    """Tool name -> domain (weather, travel, ...)."""
    return dict(_library()[1])


@lru_cache(maxsize=1)
def _phrasings() -> dict[str, Any]:
    data = yaml.safe_load((DEMO_DIR / "phrasings.yaml").read_text(encoding="utf-8"))
    more = DEMO_DIR / "phrasings_more.yaml"
    if more.exists():
        _extend_train(data, yaml.safe_load(more.read_text(encoding="utf-8")) or {}, "phrasings_more")
    return data


def _extend_train(base: Any, extra: Any, where: str) -> None:
    """Append the `train` lists of `extra` to the matching lists of `base`, in place.

    phrasings_more.yaml holds training phrasings written later and without sight of the
    held-out ones; it may only add to `train` lists, so the held-out split stays as it was."""
    if isinstance(extra, dict):
        if not isinstance(base, dict):
            raise ValueError(f"{where}: expected a mapping")
        for key, value in extra.items():
            if key == "heldout":
                raise ValueError(f"{where}: may not add held-out phrasings")
            if key not in base:
                raise ValueError(f"{where}.{key}: not in phrasings.yaml")
            if key == "train":
                if not isinstance(value, list):
                    raise ValueError(f"{where}.train: expected a list")
                base[key].extend(value)
            else:
                _extend_train(base[key], value, f"{where}.{key}")
    elif isinstance(extra, list):
        # Lists of groups (optional phrase groups, near-miss groups) match by position.
        if not isinstance(base, list) or len(extra) > len(base):
            raise ValueError(f"{where}: more groups than phrasings.yaml has")
        for i, item in enumerate(extra):
            if item:
                _extend_train(base[i], item, f"{where}[{i}]")
    elif extra is not None:
        raise ValueError(f"{where}: unexpected value {extra!r}")


def split_pool(values: list[Any], split: Split) -> list[Any]:
    """Every 4th value (index 3, 7, ...) is held out; the rest train."""
    held = split == "heldout"
    return [v for i, v in enumerate(values) if (i % 4 == 3) == held]


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Phrase:
    """A template or optional phrase: text with {slot}s plus constants it implies."""

    text: str
    sets: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def parse(item: Any) -> Phrase:
        if isinstance(item, str):
            return Phrase(item)
        return Phrase(item["text"], dict(item.get("set", {})))

    def slots(self) -> list[str]:
        return _SLOT.findall(self.text.replace(_MARK, ""))


def _schema_at(tool: Tool, path: str) -> ParamSchema:
    node = tool.function.parameters
    for part in path.split("."):
        assert node.properties is not None and part in node.properties, f"{tool.name}: no parameter {path}"
        node = node.properties[part]
    return node


def _set_path(arguments: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        arguments = arguments.setdefault(part, {})
    arguments[leaf] = value


def _show(value: Any) -> str:
    # Numbers are written as digits exactly as JSON would print them, so they copy back.
    return json.dumps(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _join_list(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


class _Sampler:
    """Draws slot values for one query; values of one pool never repeat within a query."""

    def __init__(self, rng: random.Random, split: Split):
        self.rng = rng
        self.split = split
        self.used: dict[str, set[str]] = {}

    def pool_value(self, pool: str) -> Any:
        values = split_pool(_phrasings()["pools"][pool], self.split)
        used = self.used.setdefault(pool, set())
        fresh = [v for v in values if _show(v) not in used] or values
        value = self.rng.choice(fresh)
        used.add(_show(value))
        return value

    def enum_value(self, spec: Any, schema: ParamSchema) -> tuple[Any, str]:
        assert schema.enum is not None, "enum slot on a parameter without enum"
        value = self.rng.choice(schema.enum)
        if isinstance(spec, dict) and isinstance(spec.get("enum"), dict):
            return value, self.rng.choice(spec["enum"][value])
        return value, str(value).replace("_", " ")

    def fill(self, spec: Any, schema: ParamSchema) -> tuple[Any, str]:
        """(JSON value, text) for one slot spec against its parameter schema."""
        if isinstance(spec, str) and spec != "enum":
            value = self.pool_value(spec)
            return value, _show(value)
        if spec == "enum" or "enum" in spec:
            return self.enum_value(spec, schema)
        if "list" in spec:
            assert schema.items is not None
            count = self.rng.randint(spec.get("min", 1), spec.get("max", 3))
            items: list[tuple[Any, str]] = []
            for _ in range(4 * count):  # enum items may repeat a draw; skip repeats
                value, text = self._item(spec["list"], schema.items)
                if value not in [v for v, _ in items]:
                    items.append((value, text))
                if len(items) == count:
                    break
            return [v for v, _ in items], _join_list([t for _, t in items])
        raise ValueError(f"unknown slot spec {spec!r}")

    def _item(self, spec: Any, schema: ParamSchema) -> tuple[Any, str]:
        if isinstance(spec, dict) and "fields" in spec:
            props = schema.properties or {}
            value, texts = {}, {}
            for name, sub in spec["fields"].items():
                value[name], texts[name] = self.fill(sub, props[name])
            return value, _SLOT.sub(lambda m: texts[m.group(1)], spec["render"])
        return self.fill(spec, schema)


def _insert_optional(text: str, pieces: list[str]) -> str:
    """Put optional phrases at {+}, or before the final punctuation when there is no marker."""
    if _MARK not in text:
        match = re.search(r"[.?!]$", text)
        text = text[: match.start()] + _MARK + text[match.start() :] if match else text + _MARK
    if not pieces:
        return text.replace(_MARK, "")
    before = text[: text.index(_MARK)]
    glue = "" if before.endswith(" ") or not before else " "
    return text.replace(_MARK, glue + " ".join(pieces), 1)


@dataclass
class Rendered:
    text: str
    call: Call
    phrases: list[str]  # the templates/phrases used (for split checks)
    starts_with_value: bool  # the text opens with a copied value: never re-case it


def render_call(
    name: str, template: Phrase, optional: list[Phrase], sampler: _Sampler
) -> Rendered:
    """Fill one template (plus chosen optional phrases) with values; return text and gold call."""
    tool = _library()[0][name]
    slot_specs = _phrasings()["tools"][name]["slots"]
    arguments: dict[str, Any] = {}
    texts: dict[str, str] = {}
    phrases = [template, *optional]
    for phrase in phrases:
        for slot in phrase.slots():
            if slot in texts:
                continue
            value, texts[slot] = sampler.fill(slot_specs[slot], _schema_at(tool, slot))
            _set_path(arguments, slot, value)
        for path, constant in phrase.sets.items():
            _set_path(arguments, path, constant)
    _order(_phrasings()["tools"][name].get("ordered"), arguments, texts)
    pieces = [_SLOT.sub(lambda m: texts[m.group(1)], p.text) for p in optional]
    text = _insert_optional(template.text, pieces)
    text = _SLOT.sub(lambda m: texts[m.group(1)] if m.group(1) in texts else m.group(0), text)
    first = _SLOT.match(template.text)
    starts_with_value = bool(first) and not _is_enum_slot(slot_specs[first.group(1)])
    arguments = _schema_order(tool.function.parameters, arguments)
    return Rendered(text, Call(name=name, arguments=arguments), [p.text for p in phrases], starts_with_value)


def _schema_order(schema: ParamSchema, value: Any) -> Any:
    # Gold arguments follow the schema's property order (as a decoder walking the schema
    # writes them), not the order the phrasing happened to mention them in.
    if isinstance(value, dict) and schema.properties:
        return {k: _schema_order(schema.properties[k], value[k]) for k in schema.properties if k in value}
    if isinstance(value, list) and schema.items is not None:
        return [_schema_order(schema.items, item) for item in value]
    return value


def _order(pair: list[str] | None, arguments: dict[str, Any], texts: dict[str, str]) -> None:
    # Dates drawn independently may come out reversed; a stay that ends before it starts
    # is not a request anyone makes.
    if not pair or not all(slot in texts for slot in pair):
        return
    first, second = pair
    if texts[first] > texts[second]:
        texts[first], texts[second] = texts[second], texts[first]
        _set_path(arguments, first, texts[first])
        _set_path(arguments, second, texts[second])


def _is_enum_slot(spec: Any) -> bool:
    return spec == "enum" or (isinstance(spec, dict) and "enum" in spec)


def tool_phrases(name: str, split: Split) -> tuple[list[Phrase], list[list[Phrase]]]:
    """A tool's templates and its optional phrase groups for one split."""
    spec = _phrasings()["tools"][name]
    templates = [Phrase.parse(t) for t in spec[split]]
    groups = [[Phrase.parse(p) for p in group[split]] for group in spec.get("optional", [])]
    return templates, groups


def _render_random(name: str, split: Split, sampler: _Sampler) -> Rendered:
    rng = sampler.rng
    templates, groups = tool_phrases(name, split)
    template = rng.choice(templates)
    chosen = [rng.choice(group) for group in groups if rng.random() < P_OPTIONAL]
    return render_call(name, template, chosen, sampler)


# --------------------------------------------------------------------------- queries


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lower_start(rendered: Rendered) -> str:
    text = rendered.text
    first_word = re.split(r"[ ,']", text, maxsplit=1)[0]
    # Keep "I", acronyms and copied values as they are; lower only a plain opening word.
    if rendered.starts_with_value or first_word == "I" or first_word[1:2].isupper():
        return text
    return text[:1].lower() + text[1:]


def _opening(rendered: Rendered) -> str:
    return rendered.text if rendered.starts_with_value else _capitalize(rendered.text)


@dataclass
class DemoTrace:
    """One generated example plus the phrases it was built from (templates, joiners, ...)."""

    example: Example
    phrases: list[str]
    kind: Literal["single", "double", "no_call"]


def _distractors(rng: random.Random, exclude: set[str], domain: str | None, count: int) -> list[str]:
    domains = demo_domains()
    others = [n for n in domains if n not in exclude]
    picked: list[str] = []
    if domain is not None:
        # A same-domain distractor is the hard negative the retriever and LMS must reject.
        near = [n for n in others if domains[n] == domain]
        picked += rng.sample(near, min(len(near), rng.randint(1, 2)))
    rest = [n for n in others if n not in picked]
    picked += rng.sample(rest, max(0, count - len(picked)))
    return picked[:count]


def _no_call(rng: random.Random, split: Split, sampler: _Sampler) -> tuple[str, list[str], str | None]:
    spec = _phrasings()["no_call"]
    if rng.random() < 0.5:
        text = rng.choice(spec["off_topic"][split])
        return _capitalize(text), [text], None
    group = rng.choice(spec["near_miss"])
    template = rng.choice(group[split])
    texts = {slot: _show(sampler.pool_value(pool)) for slot, pool in group["slots"].items()}
    return _SLOT.sub(lambda m: texts[m.group(1)], template), [template], group["domain"]


def _one(rng: random.Random, split: Split, index: int, seed: int) -> DemoTrace:
    tools, domains = _library()
    names = list(tools)
    sampler = _Sampler(rng, split)
    roll = rng.random()
    if roll < P_NO_CALL:
        query, phrases, domain = _no_call(rng, split, sampler)
        gold: list[str] = []
        calls: list[Call] = []
        kind: Literal["single", "double", "no_call"] = "no_call"
        candidates = _distractors(rng, set(), domain, rng.randint(3, 5))
    elif roll < P_NO_CALL + P_TWO_CALLS:
        first = rng.choice(names)
        second = first if rng.random() < P_SAME_TOOL_TWICE else rng.choice([n for n in names if n != first])
        a = _render_random(first, split, sampler)
        b = _render_random(second, split, sampler)
        joiner = rng.choice(_phrasings()["joiners"][split])
        head = re.sub(r"[.?!]+$", "", _opening(a))
        query = joiner.replace("{a}", head).replace("{b}", _lower_start(b))
        phrases = [*a.phrases, *b.phrases, joiner]
        calls, gold, kind = [a.call, b.call], sorted({first, second}), "double"
        candidates = gold + _distractors(rng, set(gold), domains[first], rng.randint(2, 4))
    else:
        name = rng.choice(names)
        rendered = _render_random(name, split, sampler)
        query, phrases = _opening(rendered), rendered.phrases
        calls, gold, kind = [rendered.call], [name], "single"
        candidates = gold + _distractors(rng, {name}, domains[name], rng.randint(2, 4))
    rng.shuffle(candidates)
    example = Example(
        query=query,
        tools=[tools[n] for n in candidates],
        answers=calls,
        source=f"demo:{split}",
        position=index,
        id=f"demo-{split}-{seed}-{index}",
    )
    return DemoTrace(example, phrases, kind)


def generate_demo_traces(split: Split, n: int, seed: int) -> list[DemoTrace]:
    """Like `generate_demo_examples`, keeping which phrases built each example."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    # A string seed is hashed with SHA-512 by `random`: stable across runs and platforms.
    rng = random.Random(f"hyfunc-demo/{split}/{seed}")
    return [_one(rng, split, i, seed) for i in range(n)]


def generate_demo_examples(split: Split, n: int, seed: int) -> list[Example]:
    """`n` seeded demo examples of one split (same arguments -> same examples)."""
    return [trace.example for trace in generate_demo_traces(split, n, seed)]


# --------------------------------------------------------------------------- example files


EXAMPLES_SEED = 2026
EXAMPLE_MIX = {"single": 20, "double": 6, "no_call": 4}


def write_examples(directory: str | Path) -> tuple[Path, Path]:
    """Write examples/requests.jsonl and examples/expected.jsonl from the held-out split.

    A fixed mix of one-call, two-call and no-call queries, one per distinct query text,
    single-call queries spread over distinct tools.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = dict(EXAMPLE_MIX)
    picked: list[Example] = []
    seen_queries: set[str] = set()
    seen_tools: set[str] = set()
    for trace in generate_demo_traces("heldout", 2000, EXAMPLES_SEED):
        example = trace.example
        if wanted[trace.kind] == 0 or example.query in seen_queries:
            continue
        if trace.kind == "single":
            if example.answers[0].name in seen_tools:
                continue
            seen_tools.add(example.answers[0].name)
        wanted[trace.kind] -= 1
        seen_queries.add(example.query)
        picked.append(example)
        if not any(wanted.values()):
            break
    requests_path, expected_path = directory / "requests.jsonl", directory / "expected.jsonl"
    with requests_path.open("w", encoding="utf-8") as req, expected_path.open("w", encoding="utf-8") as exp:
        for number, example in enumerate(picked, start=1):
            request_id = f"ex-{number:03d}"
            request = {"id": request_id, "query": example.query, "tools": [t.to_json() for t in example.tools]}
            expected = {"id": request_id, "calls": [c.model_dump() for c in example.answers]}
            req.write(json.dumps(request, ensure_ascii=False) + "\n")
            exp.write(json.dumps(expected, ensure_ascii=False) + "\n")
    return requests_path, expected_path
