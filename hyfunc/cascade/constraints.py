"""Constraint tables compiled once per vocabulary, and the per-job copy-span index.

The template machine asks the same questions at every step of every job: which tokens may
continue this JSON string, this number, this choice, this copy of the query? The answers that
depend only on the vocabulary are compiled here once per process (cached by tokenizer
identity, then by a hash of the vocabulary) so a step costs a table lookup:

- string content: a mask per escape state, the escape state each token leaves, and the mask
  of a free string's first-or-later token together with its closing quote (no per-step clone);
- numbers: the JSON-number DFA run over every number token from every state, so a digit step
  looks up ``(state) -> {token: next state}`` instead of re-running the DFA from the start;
- choices: token tries built once per option list (enum values, keys, names: content-keyed);
- copy spans: every token keyed by its bytes, so a job finds which tokens occur where in its
  query by scanning the query once (linear in the query, never the vocabulary).
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hyfunc.cascade.numbers import (
    DEAD,
    EXPONENT_STATES,
    OVERFLOW_FREE_LENGTH,
    is_finite_number_prefix,
    number_step,
)
from hyfunc.cascade.vocab import VocabConstraints

# Allowed sets larger than this are recorded as "unrestricted" (None) in teacher records.
RECORD_ALLOWED_MAX = 256
# Choice tries kept per vocabulary (option lists are per tool content; a worker sees few tools).
TRIE_CACHE_SIZE = 4096


# -- choice tries ------------------------------------------------------------------------------------


@dataclass
class TrieNode:
    """One position of a choice: the option that ends here, or the tokens that may follow."""

    terminal: int | None = None  # lowest index of an option ending here (then no children)
    children: dict[int, TrieNode] = field(default_factory=dict)
    nexts: list[int] = field(default_factory=list)  # sorted child tokens (the Generate list)
    members: list[int] = field(default_factory=list)  # option indices through this node


class ChoiceTrie:
    """The token trie of a choice's options; raises ``ValueError`` on a malformed option list
    (empty, an empty option, or an option that is a strict token prefix of another)."""

    def __init__(self, options: Sequence[Sequence[int]]):
        if not options:
            raise ValueError("a choice needs at least one option")
        self.options = [tuple(o) for o in options]
        self.root = TrieNode()
        for index, option in enumerate(self.options):
            if not option:
                raise ValueError("a choice option encodes to no tokens")
            node = self.root
            node.members.append(index)
            for token in option:
                if node.terminal is not None:
                    raise ValueError("a choice option is a token prefix of another")
                node = node.children.setdefault(token, TrieNode())
                node.members.append(index)
            if node.children:
                raise ValueError("a choice option is a token prefix of another")
            if node.terminal is None:  # identical options: the first one wins, as before
                node.terminal = index
        stack = [self.root]
        while stack:
            node = stack.pop()
            node.nexts = sorted(node.children)
            stack.extend(node.children.values())


# -- the per-vocabulary tables -------------------------------------------------------------------------


class CompiledVocab:
    """Everything the template machine needs that depends only on the vocabulary."""

    def __init__(self, vocab: VocabConstraints):
        self.vocab = vocab
        # A free string outside an escape: any string-safe token, or the closing quote.
        self.string_open = vocab.string_mask[False].clone()
        self.string_open[vocab.quote_id] = True
        self._constant_masks = {
            id(mask): (mask, _record(mask)) for mask in (vocab.string_mask[False], vocab.string_mask[True], self.string_open)
        }
        # Numbers: per (integer?, state) the tokens that keep a valid prefix and where they lead.
        self.number_moves: dict[bool, dict[int, dict[int, int]]] = {}
        for integer in (False, True):
            moves: dict[int, dict[int, int]] = {}
            for state in range(DEAD):
                row: dict[int, int] = {}
                for tid, text in vocab.number_tokens.items():
                    after = number_step(state, text, integer)
                    if after != DEAD:
                        row[tid] = after
                moves[state] = row
            self.number_moves[integer] = moves
        # Where a move may reach an exponent, "1e999"-style overflow (inf) must be checked per text.
        self.number_exponent: dict[bool, dict[int, bool]] = {
            integer: {
                state: state in EXPONENT_STATES or any(after in EXPONENT_STATES for after in row.values())
                for state, row in moves.items()
            }
            for integer, moves in self.number_moves.items()
        }
        self.number_ids: dict[str, list[int]] = {}
        for tid, text in vocab.number_tokens.items():
            self.number_ids.setdefault(text, []).append(tid)
        self.longest_number_token = max((len(t) for t in vocab.number_tokens.values()), default=0)
        # Copy spans: token ids by their bytes, and for each 3-byte prefix how long a token with
        # that prefix can be (bounds the scan at each query position).
        self.by_bytes: dict[bytes, list[int]] = {}
        self.reach: dict[bytes, int] = {}
        for tid, data in enumerate(vocab.token_bytes):
            if not data:
                continue
            self.by_bytes.setdefault(data, []).append(tid)
            if len(data) >= 3:
                key = data[:3]
                if len(data) > self.reach.get(key, 0):
                    self.reach[key] = len(data)
        self._tries: OrderedDict[tuple[tuple[int, ...], ...], ChoiceTrie] = OrderedDict()

    # -- teacher records ---------------------------------------------------------------------------

    def record(self, allowed: list[int] | torch.Tensor) -> list[int] | None:
        """The allowed ids as a teacher record stores them (None when nearly unrestricted); the
        machine's constant masks are looked up, never scanned."""
        if isinstance(allowed, torch.Tensor):
            hit = self._constant_masks.get(id(allowed))
            if hit is not None and hit[0] is allowed:
                return hit[1]
            return _record(allowed)
        return list(allowed) if len(allowed) <= RECORD_ALLOWED_MAX else None

    # -- numbers ------------------------------------------------------------------------------------

    def number_free(self, state: int, text: str, integer: bool) -> dict[int, int]:
        """Number tokens that keep ``text`` (in DFA ``state``) a valid, finite number prefix,
        with the state each leads to."""
        moves = self.number_moves[integer][state]
        if not self.number_exponent[integer][state] and len(text) + self.longest_number_token < OVERFLOW_FREE_LENGTH:
            return moves
        tokens = self.vocab.number_tokens
        return {tid: after for tid, after in moves.items() if is_finite_number_prefix(text + tokens[tid], integer)}

    # -- choices ------------------------------------------------------------------------------------

    def trie(self, options: Sequence[Sequence[int]]) -> ChoiceTrie:
        key = tuple(tuple(o) for o in options)
        trie = self._tries.get(key)
        if trie is None:
            trie = ChoiceTrie(key)
            self._tries[key] = trie
            while len(self._tries) > TRIE_CACHE_SIZE:
                self._tries.popitem(last=False)
        else:
            self._tries.move_to_end(key)
        return trie

    # -- copy spans ----------------------------------------------------------------------------------

    def spans(self, source: bytes) -> CopySpans:
        return CopySpans(self, source)


def _record(mask: torch.Tensor) -> list[int] | None:
    if int(mask.sum()) > RECORD_ALLOWED_MAX:
        return None
    return mask.nonzero().flatten().tolist()


# -- the per-job copy-span index --------------------------------------------------------------------


def word_byte(b: int) -> bool:
    return b >= 0x80 or chr(b).isalnum()


def space_byte(b: int) -> bool:
    return chr(b).isspace()


class CopySpans:
    """Where each vocabulary token occurs in one job's (JSON-escaped) query, found in one pass
    over the query: ``at[i]`` lists ``(end, token)`` for every token whose bytes are
    ``source[i:end]``. A copy in progress is the set of starts where its prefix occurs."""

    def __init__(self, tables: CompiledVocab, source: bytes):
        self.source = source
        n = len(source)
        by_bytes, reach = tables.by_bytes, tables.reach
        at: list[list[tuple[int, int]]] = [[] for _ in range(n + 1)]
        for i in range(n):
            bound = min(n - i, max(2, reach.get(source[i : i + 3], 0)))
            found = at[i]
            for end in range(i + 1, i + bound + 1):
                ids = by_bytes.get(source[i:end])
                if ids:
                    found.extend((end, tid) for tid in ids)
        self.at = at
        # A value starts at a word boundary (or with a non-word byte) and never with whitespace.
        self.first_starts = [
            i
            for i in range(n)
            if not space_byte(source[i]) and (i == 0 or not word_byte(source[i - 1]) or not word_byte(source[i]))
        ]

    def options(
        self, starts: list[int], length: int, last: int | None, used: list[tuple[int, int]]
    ) -> tuple[list[tuple[int, int]], bool]:
        """For a copy whose ``length``-byte prefix (last byte ``last``) occurs at ``starts``: the
        (start, token) pairs that extend it to a longer span clear of ``used``, and whether the
        prefix itself is a whole-word span (so the value may end here)."""
        source = self.source
        n = len(source)
        extend: list[tuple[int, int]] = []
        closable = False
        for s in starts:
            e = s + length
            if length and _overlaps(s, e, used):
                continue
            # The prefix may end the value where it ends at a word boundary (never on whitespace).
            if (
                length
                and not closable
                and last is not None
                and not space_byte(last)
                and (e == n or not word_byte(source[e]) or not word_byte(last))
            ):
                closable = True
            for end, tid in self.at[e]:
                if not used or not _overlaps(s, end, used):
                    extend.append((s, tid))
        return extend, closable


def _overlaps(a: int, b: int, used: list[tuple[int, int]]) -> bool:
    return any(u < b and a < v for u, v in used)


# -- the process-wide cache ---------------------------------------------------------------------------

_BY_TOKENIZER: weakref.WeakKeyDictionary[Any, dict[int | None, CompiledVocab]] = weakref.WeakKeyDictionary()
_BY_HASH: dict[tuple[str, int | None], CompiledVocab] = {}


def vocab_hash(tokenizer: Any) -> str:
    """A digest of the token strings by id and which ids are special: equal digests, equal tables."""
    digest = hashlib.sha256()
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    digest.update("\x00".join(p if p is not None else "\x01" for p in pieces).encode("utf-8", "surrogatepass"))
    special = sorted(set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}).keys()))
    digest.update(repr(special).encode())
    return digest.hexdigest()


def compile_vocab(tokenizer: Any, logits_size: int | None = None) -> CompiledVocab:
    """The compiled tables for a tokenizer, built at most once per process per vocabulary."""
    try:
        per = _BY_TOKENIZER.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: fall back to the vocabulary hash alone
        per = {}
    compiled = per.get(logits_size)
    if compiled is None:
        key = (vocab_hash(tokenizer), logits_size)
        compiled = _BY_HASH.get(key)
        if compiled is None:
            compiled = CompiledVocab(VocabConstraints.build(tokenizer, logits_size))
            _BY_HASH[key] = compiled
        per[logits_size] = compiled
    return compiled


def logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
