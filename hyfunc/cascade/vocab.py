"""What each token of the LMS vocabulary is, as raw bytes, for the value constraints.

The template machine asks "which tokens keep this value valid?" many times per step, so the
answers that depend only on the vocabulary are computed once here: each token's bytes, which
tokens may continue a JSON string (and in which escape state they leave it), and which
tokens are made only of number characters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

_NUMBER_BYTES = frozenset(b"0123456789.-+eE")
_ESCAPABLE = frozenset(b'"\\/bfnrt')


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2 byte-level alphabet: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes_table(tokenizer: Any) -> list[bytes | None]:
    """Raw bytes of every token id; None for special (added) tokens, which never occur in values."""
    vocab_size = len(tokenizer)
    special_ids = set(tokenizer.all_special_ids)
    special_ids.update(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    decoder = _byte_level_decoder()
    pieces = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    byte_level = all(p is None or all(ch in decoder for ch in p) for p in pieces[: min(vocab_size, 2000)] if p)
    table: list[bytes | None] = []
    for tid, piece in enumerate(pieces):
        if tid in special_ids or piece is None:
            table.append(None)
        elif byte_level and all(ch in decoder for ch in piece):
            table.append(bytes(decoder[ch] for ch in piece))
        else:
            # Not a byte-level BPE (e.g. sentencepiece): fall back to the decoder's text.
            table.append(tokenizer.decode([tid]).encode("utf-8"))
    return table


def _string_step(data: bytes, escaped: bool) -> tuple[bool, bool]:
    """Feed a token's bytes to a JSON-string-content scanner: (valid, escape pending after)."""
    for byte in data:
        if escaped:
            if byte not in _ESCAPABLE:  # \u escapes are not generated: 4 hex digits are easy to break
                return False, False
            escaped = False
        elif byte == 0x5C:  # backslash
            escaped = True
        elif byte == 0x22 or byte < 0x20:  # an unescaped quote ends the string: only the quote token may
            return False, False
    return True, escaped


@dataclass
class VocabConstraints:
    """Vocabulary facts for the template machine, computed once per tokenizer."""

    vocab_size: int
    token_bytes: list[bytes | None]
    quote_id: int
    # string content: allowed masks from each escape state, and the escape state each token leaves
    string_mask: dict[bool, torch.Tensor] = field(default_factory=dict)
    string_exit: dict[bool, dict[int, bool]] = field(default_factory=dict)
    number_tokens: dict[int, str] = field(default_factory=dict)
    digit_ids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, tokenizer: Any, logits_size: int | None = None) -> VocabConstraints:
        table = token_bytes_table(tokenizer)
        size = max(logits_size or 0, len(table))
        quote = tokenizer.encode('"', add_special_tokens=False)
        if len(quote) != 1:
            raise ValueError('tokenizer must encode a lone double quote as one token')
        self = cls(vocab_size=size, token_bytes=table, quote_id=quote[0])
        for entry_escaped in (False, True):
            mask = torch.zeros(size, dtype=torch.bool)
            exits: dict[int, bool] = {}
            for tid, data in enumerate(table):
                if not data:
                    continue
                ok, exit_escaped = _string_step(data, entry_escaped)
                if ok:
                    mask[tid] = True
                    exits[tid] = exit_escaped
            self.string_mask[entry_escaped] = mask
            self.string_exit[entry_escaped] = exits
        for tid, data in enumerate(table):
            if data and all(b in _NUMBER_BYTES for b in data):
                text = data.decode("ascii")
                self.number_tokens[tid] = text
                if len(text) == 1 and text.isdigit():
                    self.digit_ids[text] = tid
        missing = [d for d in "0123456789" if d not in self.digit_ids]
        if missing:
            raise ValueError(f"tokenizer has no single-token digits {missing}")
        return self

    def decode_value_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.token_bytes[i] or b"" for i in ids)
