"""The template machine: dynamic templating of the answer, one program per job.

The answer grammar (Qwen-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``) is
known from the candidates' schemas, so the machine writes every fixed token itself and asks
the model only what is uncertain. A program is a Python generator that yields steps:

- ``Inject(ids)``: fixed tokens to append (the decoder appends a whole run in one pass);
- ``Generate(allowed, gold)``: the model picks one token from ``allowed``; the chosen id is
  sent back into the generator.

Decisions are all token choices, so inference, teacher forcing (training) and replay of a
recorded sequence run the very same code with different pickers:

- the function name is a choice among candidate names (injected when only one remains);
- an optional parameter is included or skipped by choosing the next key (or the closing
  brace) after each value — the model decides, never the gold answer;
- enums and booleans are choices among their JSON literals; integers and numbers allow only
  tokens that keep a valid JSON number; strings run until the lone closing-quote token;
- arrays and objects recurse; after each call the model chooses another call or the end.

A value's "end token" is the first token of what follows it, so a number costs its digits
plus one decision token, and a string its content plus the closing quote.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import torch

# RECORD_ALLOWED_MAX: allowed sets larger than this are recorded as "unrestricted" (None) — a
# softmax over the whole vocabulary differs from one over most of it only in noise.
from hyfunc.cascade.constraints import RECORD_ALLOWED_MAX as RECORD_ALLOWED_MAX
from hyfunc.cascade.constraints import CompiledVocab, CopySpans, compile_vocab, logsumexp
from hyfunc.cascade.numbers import START, completion_digit, is_complete_number
from hyfunc.models.soft_slot import WRITE_MARKER
from hyfunc.schema import Call, ParamSchema, Tool

CALL_OPEN = '<tool_call>\n{"name": "'
CALL_NEXT = '\n<tool_call>\n{"name": "'
ARGS_OPEN = ', "arguments": '
CALL_CLOSE = "}\n</tool_call>"
END_OF_ANSWER = "<|im_end|>"
# Where a tokenizer has no "<|im_end|>" token (Gemma), the answer ends with its own end of turn.
END_OF_ANSWER_FALLBACKS = ("<end_of_turn>",)
_TEMPLATE_TEXTS = frozenset({CALL_OPEN, CALL_NEXT, ARGS_OPEN, CALL_CLOSE, END_OF_ANSWER, *END_OF_ANSWER_FALLBACKS})


@dataclass
class Inject:
    ids: list[int]


@dataclass
class Generate:
    """Ask the model for one token. ``allowed`` is a list of ids or a bool mask over the vocab."""

    allowed: list[int] | torch.Tensor
    gold: int | None = None
    # Log-prior added to the model's log-probabilities over ``allowed`` (same order; list only).
    bias: list[float] | None = None

    def permits(self, token: int) -> bool:
        if isinstance(self.allowed, torch.Tensor):
            return 0 <= token < self.allowed.numel() and bool(self.allowed[token])
        return token in self.allowed


Step = Inject | Generate
Program = Generator[Step, int | None, list[Call]]


class TemplateError(ValueError):
    """A gold call the machine cannot express (teacher mode) or a schema it cannot template."""


@dataclass
class MachineLimits:
    max_calls: int = 4
    max_string_tokens: int = 48
    max_number_tokens: int = 12
    max_array_items: int = 8
    # Extractive values: string and number values must be substrings of the query (the model
    # still picks which span, token by token); when no token fits, decoding falls back to free.
    copy_values: bool = False
    # With copy_values: within one call, a stretch of the query feeds at most one value (a
    # second "2026-07-11" needs a second mention; a list of names cannot repeat one mention).
    copy_distinct: bool = True
    # With copy_values: where a value could be copied, the model may instead choose to write one
    # that is not in the query (a converted number, a ticker, a normalised date): its first
    # decision is the copy's first token or the write marker `<|write|>`, after which the value is
    # free. Needs the marker in the tokenizer (hyfunc.models.soft_slot.ensure_write_marker).
    write_values: bool = False
    # The first decision of an answer is a call or no call at all (the LMS's part in irrelevance,
    # next to the retriever's relevance gate).
    no_call: bool = False


@dataclass
class TokenRecord:
    """Teacher mode output: the answer's token ids and which ones the model generates."""

    ids: list[int] = field(default_factory=list)
    generated: list[bool] = field(default_factory=list)
    # Per generated token: the ids inference would have allowed at that step, or None when
    # nearly the whole vocabulary was (free text). Training can restrict its softmax to them.
    allowed: list[list[int] | None] = field(default_factory=list)


_ALT = object()  # a value writer returns this when an alternative (e.g. "]") was chosen instead


class TemplateMachine:
    """Builds answer programs for a tokenizer; the per-vocabulary tables are compiled once per
    process (``constraints.compile_vocab``) and shared by every machine on that vocabulary."""

    def __init__(self, tokenizer: Any, limits: MachineLimits | None = None, logits_size: int | None = None):
        self.tokenizer = tokenizer
        self.limits = limits or MachineLimits()
        self.compiled: CompiledVocab = compile_vocab(tokenizer, logits_size)
        self.vocab = self.compiled.vocab
        self._encode_cache: dict[str, list[int]] = {}
        # Enum choices by content: (literal texts, then, alt) -> option token lists.
        self._enum_cache: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[list[int]]] = {}
        self._source: bytes | None = None  # set on a per-job view when copy_values is on
        self._spans: CopySpans | None = None
        self._number_literals: Counter[str] = Counter()
        self.end_text = self._end_text()
        self.write_id: int | None = None
        if self.limits.write_values:
            if WRITE_MARKER not in tokenizer.get_vocab():
                raise ValueError(f"write_values needs the {WRITE_MARKER} token in the LMS tokenizer")
            self.write_id = int(tokenizer.convert_tokens_to_ids(WRITE_MARKER))
        for text in (CALL_OPEN, CALL_NEXT, ARGS_OPEN, CALL_CLOSE):
            if not self.encode(text):
                raise ValueError(f"tokenizer cannot encode template text {text!r}")

    def _end_text(self) -> str:
        """The single special token that ends an answer: ChatML's "<|im_end|>", else the
        tokenizer's end of turn (Gemma's "<end_of_turn>")."""
        for text in (END_OF_ANSWER, *END_OF_ANSWER_FALLBACKS):
            ids = self.encode(text)
            if len(ids) == 1 and self.vocab.token_bytes[ids[0]] is None:
                return text
        wanted = " or ".join((END_OF_ANSWER, *END_OF_ANSWER_FALLBACKS))
        raise ValueError(f"{wanted} must be a single special token in the LMS tokenizer")

    # -- tokenisation -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        ids = self._encode_cache.get(text)
        if ids is None:
            # Only the template's own texts contain special tokens; names, keys and values taken
            # from schemas or gold answers are plain text even when they look like "<|soft|>".
            ids = self.vocab.encode_exact(self.tokenizer, text, split_special_tokens=text not in _TEMPLATE_TEXTS)
            self._encode_cache[text] = ids
        return ids

    # -- public entry points ------------------------------------------------------------------

    def program(
        self,
        candidates: list[Tool],
        gold: list[Call] | None = None,
        source: str | None = None,
        prior: list[float] | None = None,
        allow_no_call: bool = True,
    ) -> Program:
        """The answer program for one job. With ``gold``, each Generate carries the gold token.

        ``source`` (the query) enables extractive values when ``limits.copy_values`` is on; with
        ``gold`` it is ignored here (``teacher(source=...)`` records the copy choices instead).
        ``prior``: one log-prior per candidate (the retriever's belief), added to the LMS's own
        log-probabilities where it chooses the first call's function name.
        ``allow_no_call=False``: with ``limits.no_call`` on, this job's answer must still be a call
        (the retriever is sure enough that a candidate fits: ``cascade.no_call_ceiling``)."""
        self._check(candidates, gold, self.limits.no_call)
        if prior is not None and len(prior) != len(candidates):
            raise TemplateError("one prior per candidate")
        if gold is not None:
            prior = None
        if self.limits.copy_values and source and gold is None:
            return self._with_source(source)._answer(candidates, gold, prior, allow_no_call)
        return self._answer(candidates, gold, prior, allow_no_call)

    @staticmethod
    def _check(candidates: list[Tool], gold: list[Call] | None, no_call: bool = False) -> None:
        if not candidates:
            raise TemplateError("the template machine needs at least one candidate tool")
        if gold is not None and not gold and not no_call:
            raise TemplateError("teacher mode needs at least one gold call unless limits.no_call is on")

    def _with_source(self, source: str) -> TemplateMachine:
        """A per-job view sharing every table, plus the query bytes, where each token occurs in
        them, and the number literals they write: built in time linear in the query.

        Values are compared in their JSON-escaped form, as they are generated."""
        view = copy.copy(self)
        escaped = json.dumps(source, ensure_ascii=False)[1:-1].encode("utf-8")
        view._source = escaped
        view._spans = self.compiled.spans(escaped)
        text = escaped.decode("utf-8", errors="replace")
        view._number_literals = number_literals(text)
        view._new_call()
        return view

    def _new_call(self) -> None:
        """Forget which stretches of the source this call's values used (views only)."""
        if self._source is not None:
            self._used_spans: list[tuple[int, int]] = []
            self._used_numbers: Counter[str] = Counter()

    def _source_numbers(self, integer: bool) -> set[str]:
        """The number literals written in the source (integers only, for integer parameters),
        less those whose every mention already fed a value of this call (``copy_distinct``)."""
        assert self._source is not None
        found = self._number_literals
        if self.limits.copy_distinct:
            found = found - self._used_numbers  # a new Counter: the job's literals stay intact
        return {lit for lit in found if not integer or "." not in lit}

    def _use_number(self, literal: str) -> None:
        if self._source is not None:
            self._used_numbers[literal] += 1

    @staticmethod
    def _word_byte(b: int) -> bool:
        return b >= 0x80 or chr(b).isalnum()

    def _span_starts(self, text: bytes) -> list[int]:
        """Where ``text`` occurs in the source starting at a word boundary, outside the stretches
        this call's values already used."""
        assert self._source is not None
        source = self._source
        # A value never starts with whitespace, and never inside a word.
        if chr(text[0]).isspace():
            return []
        used = self._used_spans if self.limits.copy_distinct else []
        found, at = [], source.find(text)
        while at != -1:
            if (at == 0 or not self._word_byte(source[at - 1]) or not self._word_byte(text[0])) and not any(
                a < at + len(text) and at < b for a, b in used
            ):
                found.append(at)
            at = source.find(text, at + 1)
        return found

    def _whole_word_ends(self, text: bytes) -> list[int]:
        """Starts of the mentions of ``text`` that also end at a word boundary (a whole value)."""
        assert self._source is not None
        source = self._source
        if not text or chr(text[-1]).isspace():
            return []
        return [
            at
            for at in self._span_starts(text)
            if at + len(text) == len(source) or not self._word_byte(source[at + len(text)]) or not self._word_byte(text[-1])
        ]

    def _use_span(self, value: bytes) -> None:
        """Mark the first free whole-word mention of a finished string value as used."""
        if self._source is None or not value:
            return
        starts = self._whole_word_ends(value)
        if starts:
            self._used_spans.append((starts[0], starts[0] + len(value)))

    def teacher(self, candidates: list[Tool], gold: list[Call], source: str | None = None) -> TokenRecord:
        """Run the program with the gold answer as picker: the exact training token sequence.

        With ``source`` (the query), each step's allowed set is the one extractive decoding would
        offer wherever the gold value is a span of the source (the ids are unchanged; only
        ``record.allowed`` differs), so training can score the choices inference really makes."""
        self._check(candidates, gold, self.limits.no_call)
        record = TokenRecord()
        program = (self._with_source(source) if source else self)._answer(candidates, gold)
        send: int | None = None
        try:
            while True:
                step = program.send(send)
                send = None
                if isinstance(step, Inject):
                    record.ids.extend(step.ids)
                    record.generated.extend([False] * len(step.ids))
                else:
                    if step.gold is None or not step.permits(step.gold):
                        raise TemplateError(f"gold token {step.gold} is not allowed at this step")
                    record.ids.append(step.gold)
                    record.generated.append(True)
                    record.allowed.append(self.compiled.record(step.allowed))
                    send = step.gold
        except StopIteration as stop:
            calls: list[Call] = stop.value
        if [c.model_dump() for c in calls] != [_canonical(c).model_dump() for c in gold]:
            raise TemplateError("teacher sequence does not reproduce the gold calls")
        return record

    def replay(self, candidates: list[Tool], generated_ids: list[int], source: str | None = None) -> list[Call]:
        """Run the program picking the given generated tokens in order (round-trip checks).

        ``source``: the query the tokens were generated with (copy mode): its forced tokens were
        injected, not generated, so the replay must know them too."""
        program = self.program(candidates, source=source)
        queue = list(generated_ids)
        send: int | None = None
        try:
            while True:
                step = program.send(send)
                send = None
                if isinstance(step, Generate):
                    if not queue:
                        raise TemplateError("replay ran out of generated tokens")
                    send = queue.pop(0)
                    if not step.permits(send):
                        raise TemplateError(f"token {send} is not allowed at this step")
        except StopIteration as stop:
            return stop.value

    # -- the answer grammar -------------------------------------------------------------------

    def _answer(
        self, candidates: list[Tool], gold: list[Call] | None, prior: list[float] | None = None, allow_no_call: bool = True
    ) -> Program:
        return jump_forward(self._answer_steps(candidates, gold, prior, allow_no_call))

    def _answer_steps(
        self, candidates: list[Tool], gold: list[Call] | None, prior: list[float] | None = None, allow_no_call: bool = True
    ) -> Program:
        calls: list[Call] = []
        # The name sits inside a JSON string: escape it (a control character would break the JSON).
        name_options = [self.encode(json.dumps(tool.name, ensure_ascii=False)[1:]) for tool in candidates]
        by_name = {tool.name: i for i, tool in enumerate(candidates)}
        if self.limits.no_call and allow_no_call:
            # A call, or the end of the answer right away: the model's own no-call decision.
            gold_none = None if gold is None else int(not gold)
            if (yield from self._choose([self.encode(CALL_OPEN), self.encode(self.end_text)], gold_none)) == 1:
                return calls
        else:
            yield Inject(self.encode(CALL_OPEN))
        while True:
            gold_call = gold[len(calls)] if gold is not None else None
            gold_index = None
            if gold_call is not None:
                if gold_call.name not in by_name:
                    raise TemplateError(f"gold function {gold_call.name!r} is not among the candidates")
                gold_index = by_name[gold_call.name]
            # The retriever ranks tools for the query as a whole: it says which tool comes first,
            # not which one a second call needs (often the same tool again, or the runner-up).
            index = yield from self._choose(name_options, gold_index, prior=prior if not calls else None)
            self._new_call()
            tool = candidates[index]
            yield Inject(self.encode(ARGS_OPEN))
            params = tool.function.parameters
            arguments, _ = yield from self._object(
                params,
                gold_call.arguments if gold_call else None,
                [CALL_CLOSE],
                0 if gold_call else None,
                opened=False,
                depth=0,
            )
            calls.append(Call(name=tool.name, arguments=arguments))
            more_gold = None if gold is None else int(len(calls) >= len(gold))
            if len(calls) >= self.limits.max_calls:
                if more_gold == 0:
                    raise TemplateError(f"gold answer has more than max_calls={self.limits.max_calls} calls")
                yield Inject(self.encode(self.end_text))
                return calls
            choice = yield from self._choose([self.encode(CALL_NEXT), self.encode(self.end_text)], more_gold)
            if choice == 1:
                return calls

    # -- values ---------------------------------------------------------------------------------

    def _value(
        self,
        schema: ParamSchema,
        gold: Any,
        then: list[str],
        gold_then: int | None,
        depth: int,
        alt: list[str] | None = None,
        gold_alt: int | None = None,
    ) -> Generator[Step, int | None, tuple[Any, int]]:
        """Write one value followed by one of ``then``; returns (value, index into then).

        With ``alt`` the value may be replaced by one of those texts (an empty array's "]"):
        then it returns (_ALT, index into alt).
        """
        alt = alt or []
        teacher = gold_then is not None or gold_alt is not None
        if schema.enum is not None or schema.type in ("boolean", "null"):
            literals = schema.enum if schema.enum is not None else ([True, False] if schema.type == "boolean" else [None])
            options, count = self._enum_options(literals, then, alt)
            gold_index = None
            if teacher:
                if gold_alt is not None:
                    gold_index = count * len(then) + gold_alt
                else:
                    gold_index = _literal_index(literals, gold) * len(then) + gold_then
            index = yield from self._choose(options, gold_index)
            if index >= count * len(then):
                return _ALT, index - count * len(then)
            return literals[index // len(then)], index % len(then)

        if schema.type in ("integer", "number"):
            return (yield from self._number(schema.type == "integer", gold, then, gold_then, alt, gold_alt))

        opener = {"object": "{", "array": "["}.get(schema.type or "string", '"')
        if alt:
            gold_open = None
            if teacher:
                gold_open = 0 if gold_alt is None else 1 + gold_alt
            index = yield from self._choose([self.encode(opener)] + [self.encode(a) for a in alt], gold_open)
            if index > 0:
                return _ALT, index - 1
        else:
            yield Inject(self.encode(opener))

        if schema.type == "object":
            return (yield from self._object(schema, gold, then, gold_then, opened=True, depth=depth))
        if schema.type == "array":
            return (yield from self._array(schema, gold, then, gold_then, depth))
        return (yield from self._string(gold, then, gold_then, teacher))

    def _enum_options(self, literals: list[Any], then: list[str], alt: list[str]) -> tuple[list[list[int]], int]:
        """The token lists of an enum choice (each literal followed by each ``then``, then the
        alternatives), cached by content: a 250-value enum is encoded once, not per decision."""
        texts = [json.dumps(v, ensure_ascii=False) for v in literals]
        key = ("\x00".join(texts), tuple(then), tuple(alt))
        options = self._enum_cache.get(key)
        if options is None:
            options = [self.encode(lit + t) for lit in texts for t in then] + [self.encode(a) for a in alt]
            if len(self._enum_cache) > 4096:
                self._enum_cache.clear()
            self._enum_cache[key] = options
        return options, len(texts)

    def _string(
        self, gold: Any, then: list[str], gold_then: int | None, teacher: bool
    ) -> Generator[Step, int | None, tuple[Any, int]]:
        vocab = self.vocab
        gold_ids: list[int] | None = None
        if teacher:
            if not isinstance(gold, str):
                raise TemplateError(f"gold value {gold!r} is not a string")
            gold_ids = self.encode(json.dumps(gold, ensure_ascii=False)[1:-1]) if gold else []
            if len(gold_ids) > self.limits.max_string_tokens:
                raise TemplateError(f"gold string {gold!r} is longer than max_string_tokens")
        content: list[int] = []
        escaped = False
        writing = False  # the model chose to write this value rather than copy it
        gold_bytes = vocab.decode_value_bytes(gold_ids) if gold_ids else b""
        spans = self._spans
        # A copy in progress: where its prefix occurs in the query, how long it is, its last byte.
        starts = spans.first_starts if spans is not None else []
        length, last = 0, None
        used = self._used_spans if spans is not None and self.limits.copy_distinct else []
        while True:
            if len(content) >= self.limits.max_string_tokens and not escaped:
                break  # length cap: the machine closes the string itself
            target = None
            if gold_ids is not None:
                target = gold_ids[len(content)] if len(content) < len(gold_ids) else vocab.quote_id
            safe = vocab.string_exit[escaped]  # string-safe tokens from this escape state
            copy_allowed: list[int] | None = None
            if spans is not None and starts:
                extend, closable = spans.options(starts, length, last, used)
                copied = {t for _, t in extend if t != vocab.quote_id and t in safe}
                if closable:
                    copied.add(vocab.quote_id)
                if copied:
                    copy_allowed = sorted(copied)
            if copy_allowed is not None and self.write_id is not None and not content and not writing:
                # The value's first decision: copy (a span's first token) or write (the marker).
                wanted = None
                if gold_ids is not None:
                    wanted = target if target in copy_allowed and self._whole_word_ends(gold_bytes) else self.write_id
                token = yield Generate([*copy_allowed, self.write_id], wanted)
                if token == self.write_id:
                    writing = True
                    starts = []
                    continue
            elif copy_allowed is not None and (target is None or target in copy_allowed) and not writing:
                # A gold value that is not a span of the source is written freely (as inference
                # would when the query lacks it): teacher mode keeps the copy list only when gold fits it.
                token = yield Generate(copy_allowed, target)
            else:
                allowed = vocab.string_mask[True] if escaped else self.compiled.string_open
                token = yield Generate(allowed, target)
            if token == vocab.quote_id and not escaped:
                break
            escaped = vocab.string_exit[escaped][token]
            content.append(token)
            if spans is not None and starts:
                data = vocab.token_bytes[token] or b""
                source = spans.source
                starts = [s for s in starts if source.startswith(data, s + length)]
                length += len(data)
                last = data[-1] if data else last
        if len(content) >= self.limits.max_string_tokens:
            yield Inject([vocab.quote_id])
        value_bytes = vocab.decode_value_bytes(content)
        self._use_span(value_bytes)
        raw = value_bytes.decode("utf-8", errors="replace")
        try:
            value = json.loads('"' + raw + '"')
        except json.JSONDecodeError:  # unreachable by construction; kept as a guard for odd tokenizers
            value = raw
        index = yield from self._choose([self.encode(t) for t in then], gold_then)
        return value, index

    def _number(
        self,
        integer: bool,
        gold: Any,
        then: list[str],
        gold_then: int | None,
        alt: list[str],
        gold_alt: int | None,
    ) -> Generator[Step, int | None, tuple[Any, int]]:
        vocab = self.vocab
        teacher = gold_then is not None or gold_alt is not None
        gold_ids: list[int] = []
        if teacher and gold_alt is None:
            if isinstance(gold, bool) or not isinstance(gold, (int, float)) or (integer and not isinstance(gold, int)):
                raise TemplateError(f"gold value {gold!r} is not {'an integer' if integer else 'a number'}")
            gold_ids = self.encode(json.dumps(gold))
        then_ids = [self.encode(t) for t in then]
        alt_ids = [self.encode(a) for a in alt]
        text = ""
        state = START  # the number DFA's state after ``text``: each step is a table lookup
        count = 0
        writing = False  # the model chose to write this number rather than copy one
        while True:
            if count >= self.limits.max_number_tokens:
                fill = completion_digit(text, integer)
                if fill:
                    yield Inject([vocab.digit_ids[fill]])
                    text += fill
                break
            target = None
            if teacher:
                if gold_alt is not None:
                    target = alt_ids[gold_alt][0]
                elif count < len(gold_ids):
                    target = gold_ids[count]
                else:
                    target = then_ids[gold_then][0]
            moves = self.compiled.number_free(state, text, integer)
            free = set(moves)
            numeric, allowed = free, self._number_allowed(free, text, integer, alt_ids, then_ids, blocked=False)
            offer_write = False
            if self._source is not None and not writing:
                literals = self._source_numbers(integer)
                extend = self._number_extensions(text, literals, free)
                closable = text in literals
                if extend or closable:  # otherwise (no such number in the query) the number stays free
                    copy_allowed = self._number_allowed(extend, text, integer, alt_ids, then_ids, blocked=not closable)
                    if self.write_id is not None and not text:
                        # The number's first decision: copy a literal of the query, or write one.
                        offer_write = True
                        numeric, allowed = extend, copy_allowed | {self.write_id}
                        if teacher:
                            copyable = gold_alt is not None or json.dumps(gold) in literals
                            target = target if copyable and target in copy_allowed else self.write_id
                    # Teacher mode keeps the copy restriction only where the gold number fits it.
                    elif target is None or target in copy_allowed:
                        numeric, allowed = extend, copy_allowed
            token = yield Generate(sorted(allowed), target)
            if offer_write and token == self.write_id:
                writing = True
                continue
            if token in numeric:
                text += vocab.number_tokens[token]
                state = moves[token]
                count += 1
                continue
            if not text and alt_ids and any(ids[0] == token for ids in alt_ids):
                index = yield from self._choose(alt_ids, gold_alt, first=token)
                return _ALT, index
            self._use_number(text)
            index = yield from self._choose(then_ids, gold_then, first=token)
            return json.loads(text), index
        self._use_number(text)
        index = yield from self._choose(then_ids, gold_then)
        return json.loads(text), index

    def _number_extensions(self, text: str, literals: set[str], free: set[int]) -> set[int]:
        """Number tokens that extend ``text`` along one of the query's literals: each literal's
        remainder is cut at every length and looked up, instead of testing every number token."""
        ids = self.compiled.number_ids
        extend: set[int] = set()
        for literal in literals:
            if len(literal) > len(text) and literal.startswith(text):
                rest = literal[len(text) :]
                for k in range(1, len(rest) + 1):
                    extend.update(t for t in ids.get(rest[:k], ()) if t in free)
        return extend

    @staticmethod
    def _number_allowed(
        numeric: set[int], text: str, integer: bool, alt_ids: list[list[int]], then_ids: list[list[int]], blocked: bool
    ) -> set[int]:
        """A number step's choices: digits that keep a valid number, an alternative (before the
        first digit), or the continuation once the number is complete (unless a copy must go on)."""
        allowed = set(numeric)
        if not text and alt_ids:
            allowed |= {ids[0] for ids in alt_ids}
        if is_complete_number(text, integer) and not (blocked and numeric):
            allowed |= {ids[0] for ids in then_ids}
        return allowed

    def _object(
        self,
        schema: ParamSchema,
        gold: Any,
        then: list[str],
        gold_then: int | None,
        opened: bool,
        depth: int,
    ) -> Generator[Step, int | None, tuple[Any, int]]:
        teacher = gold_then is not None
        if not opened:
            yield Inject(self.encode("{"))
        if teacher and not isinstance(gold, dict):
            raise TemplateError(f"gold value {gold!r} is not an object")
        props = list((schema.properties or {}).items())
        if schema.properties is None:
            return (yield from self._free_object(gold, then, gold_then))
        required = set(schema.required or [])
        if teacher:
            unknown = [k for k in gold if k not in dict(props)]
            if unknown:
                raise TemplateError(f"gold arguments {unknown} are not in the schema")
        result: dict[str, Any] = {}
        position = 0  # index of the next property that may still be written
        separator = ""
        # The first key (or "}") is chosen right after "{"; later keys are chosen as the "then"
        # of the value before them, so include/skip costs one decision token, not a pass each.
        options, keys = self._key_options(props, position, required, separator)
        index = yield from self._choose([self.encode(o) for o in options], _gold_key(keys, gold) if teacher else None)
        while keys[index] is not None:
            name = keys[index]
            position = [p[0] for p in props].index(name) + 1
            next_options, next_keys = self._key_options(props, position, required, ", ")
            gold_next = _gold_key(next_keys, gold) if teacher else None
            value, index = yield from self._value(
                props[position - 1][1], gold.get(name) if teacher else None, next_options, gold_next, depth + 1
            )
            result[name] = value
            keys = next_keys
        index = yield from self._choose([self.encode(t) for t in then], gold_then)
        return result, index

    @staticmethod
    def _key_options(
        props: list[tuple[str, ParamSchema]], position: int, required: set[str], separator: str
    ) -> tuple[list[str], list[str | None]]:
        """Which keys may come next: optional ones up to and including the next required one;
        the closing brace only when no required key is left."""
        options: list[str] = []
        keys: list[str | None] = []
        for name, _ in props[position:]:
            options.append(separator + json.dumps(name, ensure_ascii=False) + ": ")
            keys.append(name)
            if name in required:
                break
        if not any(name in required for name, _ in props[position:]):
            options.append("}")
            keys.append(None)
        return options, keys

    def _free_object(self, gold: Any, then: list[str], gold_then: int | None) -> Generator[Step, int | None, tuple[Any, int]]:
        """An object schema without properties: string keys with string values."""
        teacher = gold_then is not None
        items = list(gold.items()) if teacher else []
        if teacher and any(not isinstance(v, str) for _, v in items):
            raise TemplateError("free-form objects (no properties) carry string values only")
        result: dict[str, Any] = {}
        index = yield from self._choose([self.encode('"'), self.encode("}")], (0 if items else 1) if teacher else None)
        while index == 0:
            n = len(result)
            key, _ = yield from self._string(items[n][0] if teacher else None, [": "], 0 if teacher else None, teacher)
            yield Inject(self.encode('"'))
            value_then = [', "', "}"] if n + 1 < self.limits.max_array_items else ["}"]
            gold_next = None
            if teacher:
                gold_next = 0 if n + 1 < len(items) else len(value_then) - 1
                if n + 1 < len(items) and len(value_then) == 1:
                    raise TemplateError("gold free-form object has more keys than max_array_items")
            value, chosen = yield from self._string(items[n][1] if teacher else None, value_then, gold_next, teacher)
            result[key] = value
            index = 0 if value_then[chosen] == ', "' else 1
        index = yield from self._choose([self.encode(t) for t in then], gold_then)
        return result, index

    def _array(
        self, schema: ParamSchema, gold: Any, then: list[str], gold_then: int | None, depth: int
    ) -> Generator[Step, int | None, tuple[Any, int]]:
        teacher = gold_then is not None
        if teacher and not isinstance(gold, list):
            raise TemplateError(f"gold value {gold!r} is not an array")
        if teacher and len(gold) > self.limits.max_array_items:
            raise TemplateError(f"gold array has more than max_array_items={self.limits.max_array_items} items")
        items_schema = schema.items or ParamSchema(type="string")
        result: list[Any] = []
        # First item or "]" (empty array): the value writer takes "]" as its alternative.
        item_then = [", ", "]"] if self.limits.max_array_items > 1 else ["]"]
        gold_alt = 0 if teacher and not gold else None
        gold_item_then = None
        if teacher and gold:
            gold_item_then = _array_then(len(result), len(gold), item_then)
        value, index = yield from self._value(
            items_schema, gold[0] if teacher and gold else None, item_then, gold_item_then, depth + 1, ["]"], gold_alt
        )
        if value is not _ALT:
            result.append(value)
            while item_then[index] == ", ":
                item_then = [", ", "]"] if len(result) + 1 < self.limits.max_array_items else ["]"]
                gold_item_then = _array_then(len(result), len(gold), item_then) if teacher else None
                value, index = yield from self._value(
                    items_schema, gold[len(result)] if teacher else None, item_then, gold_item_then, depth + 1
                )
                result.append(value)
        index = yield from self._choose([self.encode(t) for t in then], gold_then)
        return result, index

    # -- the choice primitive -------------------------------------------------------------------

    def _choose(
        self,
        options: list[list[int]],
        gold_index: int | None,
        first: int | None = None,
        prior: list[float] | None = None,
    ) -> Generator[Step, int | None, int]:
        """Pick one option by walking the token trie: forced tokens are injected, branches generated.

        ``first``: the first token was already chosen (a number's end token).
        ``prior``: a log-prior per option; at each branch it becomes a bias per next token, the
        log of the prior mass of the options still alive behind that token.
        """
        try:
            trie = self.compiled.trie(options)  # compiled once per option list (content-keyed)
        except ValueError as err:
            raise TemplateError(str(err)) from None
        node = trie.root
        pos = 0
        forced: list[int] = []
        if first is not None:
            if first not in node.children:
                raise TemplateError(f"token {first} does not start any of the choices")
            node = node.children[first]
            pos = 1
        while True:
            if node.terminal is not None:
                if forced:
                    yield Inject(forced)
                return node.terminal
            if len(node.nexts) == 1:
                token = node.nexts[0]
                forced.append(token)
            else:
                if forced:
                    yield Inject(forced)
                    forced = []
                target = trie.options[gold_index][pos] if gold_index is not None else None
                bias = None
                if prior is not None:
                    total = logsumexp([prior[i] for i in node.members])
                    bias = [logsumexp([prior[i] for i in node.children[t].members]) - total for t in node.nexts]
                token = yield Generate(list(node.nexts), target, bias)
                if token not in node.children:
                    raise TemplateError(f"token {token} is not one of the allowed choices")
            node = node.children[token]
            pos += 1


def rewrite_steps(program: Program, rewrite: Callable[[Step], Step | int]) -> Program:
    """Run ``program`` with each of its steps passed through ``rewrite``, which returns the step to
    yield in its place, or a token id that answers a ``Generate`` itself (the token is then
    injected and sent back to the program)."""
    send: int | None = None
    while True:
        try:
            step = program.send(send)
        except StopIteration as stop:
            return stop.value
        out = rewrite(step)
        if isinstance(out, int):
            yield Inject([out])
            send = out
        else:
            send = yield out


def _forced_token(step: Step) -> Step | int:
    if (
        isinstance(step, Generate)
        and isinstance(step.allowed, list)
        and len(step.allowed) == 1
        and (step.gold is None or step.gold == step.allowed[0])
    ):
        return step.allowed[0]
    return step


def jump_forward(program: Program) -> Program:
    """Forced decisions become injections: a ``Generate`` that allows exactly one token (a copy
    span with one way to go on, a number literal's next digit, ...) is yielded as ``Inject`` of
    that token and the token is sent back to the program. The tokens are the same either way;
    the decoder just spends no decision (and no pass) on them, and teacher mode records them as
    injected, so training scores only what inference asks. A forced step whose gold token is a
    different one is left a ``Generate`` (teacher mode then reports the gold as not allowed)."""
    return rewrite_steps(program, _forced_token)


# A number as people write it: thousands separators ("200,000"), a scale word or letter ("1.5M",
# "3 billion", "10k"). Whole numbers only: not the pieces of a date, a version or a word
# ("2026-04-18", "pm2.5"); "5m" (metres?) is left alone.
_NUMBER_MENTION = re.compile(
    r"(?<![\w.\-])(-?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?"
    r"(?:\s?(k|K|thousand|M|mn|million|B|bn|billion|trillion)\b)?(?![\w\-]|\.\d|,\d{3}(?!\d))"
)
_SCALES = {"k": 3, "K": 3, "thousand": 3, "M": 6, "mn": 6, "million": 6, "B": 9, "bn": 9, "billion": 9, "trillion": 12}


def number_literals(text: str) -> Counter[str]:
    """The JSON number literals a query's mentions can be copied as: "$200,000" gives 200000
    (never 200 and 000), "1.5M" gives 1500000 and 1.5 (the parameter may count in millions)."""
    from decimal import Decimal

    found: Counter[str] = Counter()
    for match in _NUMBER_MENTION.finditer(text):
        sign, digits, fraction, scale = match.group(1), match.group(2).replace(",", ""), match.group(3) or "", match.group(4)
        plain = sign + str(int(digits)) + fraction if digits.isdigit() else sign + digits + fraction
        if len(digits) > 1 and digits.startswith("0") and "," not in match.group(2):
            plain = sign + digits + fraction  # "007" is not a number literal; kept only as written
            if not re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?", plain):
                continue
        found[plain] += 1
        if scale:
            value = Decimal(sign + digits + fraction).scaleb(_SCALES[scale])
            scaled = format(value.normalize(), "f")
            found[scaled if "." not in scaled else scaled.rstrip("0").rstrip(".")] += 1
    return found


def _literal_index(literals: list[Any], gold: Any) -> int:
    def numeric(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for i, value in enumerate(literals):
        if value == gold and (type(value) is type(gold) or (numeric(value) and numeric(gold))):
            return i
    raise TemplateError(f"gold value {gold!r} is not one of {literals!r}")


def _gold_key(keys: list[str | None], gold: dict[str, Any]) -> int:
    for i, name in enumerate(keys):
        if name is None or name in gold:
            return i
    raise TemplateError(f"gold arguments skip a required key among {keys}")


def _array_then(count: int, total: int, item_then: list[str]) -> int:
    """Gold continuation after item ``count`` (0-based) of ``total``: another item or the end."""
    if count + 1 < total:
        if ", " not in item_then:
            raise TemplateError("gold array is longer than the machine allows")
        return item_then.index(", ")
    return item_then.index("]")


def _canonical(call: Call) -> Call:
    """Gold calls compare after a JSON round trip (tuples become lists and so on)."""
    return Call(name=call.name, arguments=json.loads(json.dumps(call.arguments)))
