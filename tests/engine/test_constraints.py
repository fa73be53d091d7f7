"""The compiled constraint tables answer exactly what the step-by-step rules answer.

Each table in ``hyfunc.cascade.constraints`` replaces a rule the template machine used to
evaluate at every step (re-running the number DFA from the start, searching the query for
every token, re-checking every pair of choice options). Here random vocabularies (hypothesis)
are compiled and every table is compared with a direct evaluation of its rule.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hyfunc.cascade.constraints import (
    RECORD_ALLOWED_MAX,
    ChoiceTrie,
    CompiledVocab,
    CopySpans,
    compile_vocab,
)
from hyfunc.cascade.numbers import START, is_finite_number_prefix, number_state
from hyfunc.cascade.vocab import VocabConstraints

DIGITS = [str(d).encode() for d in range(10)]
NUMBER_PIECES = st.text("0123456789.-+eE", min_size=1, max_size=4).map(str.encode)
WORD_PIECES = st.one_of(
    st.binary(min_size=1, max_size=4),
    st.text("ab c-\\\"'.,\n", min_size=1, max_size=3).map(str.encode),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=2).map(str.encode),
)


@st.composite
def vocabularies(draw: st.DrawFn) -> list[bytes | None]:
    """Token bytes by id: every digit and the quote (the machine needs them), random number and
    text pieces, duplicates, and a few specials (None)."""
    pieces = DIGITS + [b'"']
    pieces += draw(st.lists(NUMBER_PIECES, max_size=12))
    pieces += draw(st.lists(WORD_PIECES, max_size=40))
    table: list[bytes | None] = list(pieces)
    for _ in range(draw(st.integers(0, 3))):
        table.insert(draw(st.integers(0, len(table))), None)
    return table


def compiled(table: list[bytes | None]) -> CompiledVocab:
    return CompiledVocab(VocabConstraints.from_table(table, table.index(b'"')))


# -- numbers ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(vocabularies(), st.data())
def test_number_moves_equal_the_dfa_run_from_the_start(table, data) -> None:
    tables = compiled(table)
    tokens = tables.vocab.number_tokens
    integer = data.draw(st.booleans())
    # Walk a random valid prefix token by token, comparing the table with the rule at each step;
    # long prefixes and exponents reach the overflow check ("1e999" is inf, not JSON).
    text = data.draw(st.sampled_from(["", "1e30", "-9" + "9" * 305, "12"]))
    if not is_finite_number_prefix(text, integer) and text:
        text = ""
    state = number_state(text, integer) if text else START
    for _ in range(6):
        moves = tables.number_free(state, text, integer)
        expected = {tid for tid, piece in tokens.items() if is_finite_number_prefix(text + piece, integer)}
        assert set(moves) == expected
        for tid, after in moves.items():
            assert after == number_state(text + tokens[tid], integer)
        if not moves:
            break
        tid = data.draw(st.sampled_from(sorted(moves)))
        text += tokens[tid]
        state = moves[tid]


def test_number_overflow_is_refused_per_text() -> None:
    table: list[bytes | None] = [*DIGITS, b'"', b"e", b"99", b"999"]
    tables = compiled(table)
    text = "1e2"
    free = tables.number_free(number_state(text, False), text, False)
    assert table.index(b"99") in free and table.index(b"999") not in free  # 1e299 is finite, 1e2999 is not
    assert all(math.isfinite(float(text + tables.vocab.number_tokens[t])) for t in free)


# -- copy spans ------------------------------------------------------------------------------------


def _word(b: int) -> bool:
    return b >= 0x80 or chr(b).isalnum()


def _span_starts(source: bytes, text: bytes, used: list[tuple[int, int]]) -> list[int]:
    """The rule as the machine stated it: occurrences of ``text`` starting at a word boundary
    (never with whitespace), clear of the used stretches."""
    if chr(text[0]).isspace():
        return []
    found, at = [], source.find(text)
    while at != -1:
        if (at == 0 or not _word(source[at - 1]) or not _word(text[0])) and not any(
            a < at + len(text) and at < b for a, b in used
        ):
            found.append(at)
        at = source.find(text, at + 1)
    return found


def _closable(source: bytes, prefix: bytes, used: list[tuple[int, int]]) -> bool:
    if not prefix or chr(prefix[-1]).isspace():
        return False
    return any(
        at + len(prefix) == len(source) or not _word(source[at + len(prefix)]) or not _word(prefix[-1])
        for at in _span_starts(source, prefix, used)
    )


SOURCES = st.one_of(
    st.text("ab c-.1\\\"", max_size=24).map(str.encode),
    st.binary(max_size=16),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=8).map(str.encode),
)


@settings(max_examples=80, deadline=None)
@given(vocabularies(), SOURCES, st.data())
def test_copy_spans_equal_searching_the_query_for_every_token(table, source, data) -> None:
    tables = compiled(table)
    spans = CopySpans(tables, source)
    used: list[tuple[int, int]] = []
    if source and data.draw(st.booleans()):
        a = data.draw(st.integers(0, len(source) - 1))
        used = [(a, data.draw(st.integers(a + 1, len(source))))]
    # Follow a copy token by token, as the machine does: starts shrink, the prefix grows.
    starts, prefix = spans.first_starts, b""
    for _ in range(5):
        extend, closable = spans.options(starts, len(prefix), prefix[-1] if prefix else None, used)
        expected = {
            tid for tid, piece in enumerate(table) if piece and _span_starts(source, prefix + piece, used)
        }
        assert {tid for _, tid in extend} == expected
        assert closable == _closable(source, prefix, used)
        if not expected:
            break
        tid = data.draw(st.sampled_from(sorted(expected)))
        piece = table[tid]
        assert piece is not None
        starts = [s for s in starts if source.startswith(piece, s + len(prefix))]
        prefix += piece


def test_copy_index_is_built_from_the_query_not_the_vocabulary() -> None:
    """Only positions of the query are visited: a token absent from the query is never listed."""
    table: list[bytes | None] = [*DIGITS, b'"', b"Par", b"is", b"Paris", b"Lon", b"don"]
    spans = CopySpans(compiled(table), b"to Paris")
    listed = {tid for at in spans.at for _, tid in at}
    assert table.index(b"Lon") not in listed and table.index(b"don") not in listed
    assert (8, table.index(b"Paris")) in spans.at[3] and (6, table.index(b"Par")) in spans.at[3]


# -- choice tries ----------------------------------------------------------------------------------


def _walk_reference(options: list[list[int]], picks: list[int]) -> tuple[list[list[int]], int]:
    """The old per-decision rule: filter the live options position by position."""
    alive = list(range(len(options)))
    pos, branches = 0, []
    picks = list(picks)
    while True:
        finished = [i for i in alive if len(options[i]) == pos]
        if finished:
            return branches, finished[0]
        nexts = sorted({options[i][pos] for i in alive})
        if len(nexts) > 1:
            branches.append(nexts)
            token = nexts[picks.pop(0) % len(nexts)] if picks else nexts[0]
        else:
            token = nexts[0]
        alive = [i for i in alive if options[i][pos] == token]
        pos += 1


def _walk_trie(trie: ChoiceTrie, picks: list[int]) -> tuple[list[list[int]], int]:
    node, branches = trie.root, []
    picks = list(picks)
    while node.terminal is None:
        if len(node.nexts) > 1:
            branches.append(node.nexts)
            token = node.nexts[picks.pop(0) % len(node.nexts)] if picks else node.nexts[0]
        else:
            token = node.nexts[0]
        node = node.children[token]
    return branches, node.terminal


def _prefix_conflict(options: list[list[int]]) -> bool:
    return any(
        i != j and len(a) < len(b) and b[: len(a)] == a for i, a in enumerate(options) for j, b in enumerate(options)
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=4), min_size=1, max_size=8), st.lists(st.integers(0, 9), max_size=6))
def test_choice_trie_equals_filtering_every_option(options, picks) -> None:
    if _prefix_conflict(options):
        with pytest.raises(ValueError, match="prefix"):
            ChoiceTrie(options)
        return
    assert _walk_trie(ChoiceTrie(options), picks) == _walk_reference(options, picks)


def test_choice_trie_refuses_empty_choices() -> None:
    with pytest.raises(ValueError, match="at least one option"):
        ChoiceTrie([])
    with pytest.raises(ValueError, match="no tokens"):
        ChoiceTrie([[1], []])


def test_tries_are_cached_by_content() -> None:
    tables = compiled([*DIGITS, b'"'])
    assert tables.trie([[1, 2], [1, 3]]) is tables.trie(((1, 2), (1, 3)))
    assert tables.trie([[1, 2], [1, 3]]) is not tables.trie([[1, 2], [1, 4]])


# -- strings and records ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(vocabularies())
def test_free_string_mask_and_records(table) -> None:
    tables = compiled(table)
    vocab = tables.vocab
    expected = vocab.string_mask[False].clone()
    expected[vocab.quote_id] = True
    assert torch.equal(tables.string_open, expected)
    for mask in (vocab.string_mask[False], vocab.string_mask[True], tables.string_open):
        ids = mask.nonzero().flatten().tolist()
        assert tables.record(mask) == (ids if len(ids) <= RECORD_ALLOWED_MAX else None)
        assert tables.record(mask.clone()) == tables.record(mask)  # a fresh tensor is scanned: same answer
    assert tables.record([3, 1]) == [3, 1]
    assert tables.record(list(range(RECORD_ALLOWED_MAX + 1))) is None


def test_compiled_once_per_vocabulary(lms_tokenizer) -> None:
    import copy

    first = compile_vocab(lms_tokenizer)
    assert compile_vocab(lms_tokenizer) is first  # same tokenizer object
    assert compile_vocab(copy.deepcopy(lms_tokenizer)) is first  # same vocabulary, another object
    assert compile_vocab(lms_tokenizer, logits_size=len(lms_tokenizer) + 64) is not first
