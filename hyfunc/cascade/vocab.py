"""What each token of the LMS vocabulary is, as raw bytes, for the value constraints.

Two vocabulary families are read exactly: byte-level BPE (GPT-2, Qwen, SmolLM2: every byte
is a printable stand-in character, a space is "Ġ") and SentencePiece (Llama, Gemma: a space
is "▁" (Metaspace), and bytes without a piece of their own are byte-fallback tokens
"<0x0A>"). Anything else falls back to the tokenizer's own decoding of each token.

The template machine asks "which tokens keep this value valid?" many times per step, so the
answers that depend only on the vocabulary are computed once here: each token's bytes, which
tokens may continue a JSON string (and in which escape state they leave it), and which
tokens are made only of number characters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

_NUMBER_BYTES = frozenset(b"0123456789.-+eE")
_ESCAPABLE = frozenset(b'"\\/bfnrt')
METASPACE = "\u2581"  # "▁": SentencePiece's visible space
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


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


def vocabulary_kind(tokenizer: Any, pieces: list[str | None]) -> str:
    """"byte_level", "sentencepiece" or "other", from the tokenizer's decoder when it says so,
    else from the pieces themselves (the whole vocabulary, not a sample)."""
    decoder_types: set[str] = set()
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    spec: Any = {}
    if decoder is not None:
        try:  # the decoder's own JSON, not the whole tokenizer's (which holds every merge)
            spec = json.loads(decoder.__getstate__())
        except (ValueError, TypeError, AttributeError):
            spec = {}
        stack = [spec]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                decoder_types.add(str(node.get("type")))
                if node.get("type") == "Replace" and METASPACE in json.dumps(node, ensure_ascii=False):
                    decoder_types.add("Metaspace")
                stack.extend(node.get("decoders") or [])
    if "ByteLevel" in decoder_types:
        return "byte_level"
    if decoder_types & {"Metaspace", "ByteFallback"}:
        return "sentencepiece"
    alphabet = _byte_level_decoder()
    present = [p for p in pieces if p]
    if present and all(ch in alphabet for p in present for ch in p):
        return "byte_level"
    if any(METASPACE in p or _BYTE_FALLBACK.fullmatch(p) for p in present):
        return "sentencepiece"
    return "other"


def piece_bytes(piece: str, kind: str) -> bytes | None:
    """A token piece's raw bytes for a vocabulary kind (None when the kind cannot say)."""
    if kind == "byte_level":
        alphabet = _byte_level_decoder()
        try:
            return bytes([alphabet[ch] for ch in piece])
        except KeyError:
            return None
    if kind == "sentencepiece":
        byte = _BYTE_FALLBACK.fullmatch(piece)
        if byte:
            return bytes([int(byte.group(1), 16)])
        return piece.replace(METASPACE, " ").encode("utf-8")
    return None


def token_bytes_table(tokenizer: Any) -> list[bytes | None]:
    """Raw bytes of every token id; None for special (added) tokens, which never occur in values."""
    vocab_size = len(tokenizer)
    special_ids = set(tokenizer.all_special_ids)
    special_ids.update(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    pieces = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    kind = vocabulary_kind(tokenizer, [p for tid, p in enumerate(pieces) if tid not in special_ids])
    table: list[bytes | None] = []
    for tid, piece in enumerate(pieces):
        if tid in special_ids or piece is None:
            table.append(None)
            continue
        data = piece_bytes(piece, kind)
        # Unknown kinds (e.g. WordPiece): the decoder's text is the best answer there is.
        table.append(data if data is not None else tokenizer.decode([tid]).encode("utf-8"))
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
    # special and added tokens as their text, to compare an encoding with the text it encodes
    special_text: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def build(cls, tokenizer: Any, logits_size: int | None = None) -> VocabConstraints:
        table = token_bytes_table(tokenizer)
        size = max(logits_size or 0, len(table))
        specials = [tid for tid, data in enumerate(table) if data is None]
        special_text = {
            tid: (piece or "").encode("utf-8")
            for tid, piece in zip(specials, tokenizer.convert_ids_to_tokens(specials), strict=True)
        }
        probe = cls(vocab_size=size, token_bytes=table, quote_id=-1, special_text=special_text)
        quote = probe.encode_exact(tokenizer, '"')
        if len(quote) != 1 or table[quote[0]] != b'"':
            raise ValueError("tokenizer must encode a lone double quote as one token")
        return cls.from_table(table, quote[0], size, special_text)

    @classmethod
    def from_table(
        cls, table: list[bytes | None], quote_id: int, size: int | None = None, special_text: dict[int, bytes] | None = None
    ) -> VocabConstraints:
        """The facts for a vocabulary given as token bytes (None = special) and its quote token."""
        size = max(size or 0, len(table))
        self = cls(vocab_size=size, token_bytes=table, quote_id=quote_id, special_text=special_text or {})
        for entry_escaped in (False, True):
            flags = [False] * size
            exits: dict[int, bool] = {}
            for tid, data in enumerate(table):
                if not data:
                    continue
                ok, exit_escaped = _string_step(data, entry_escaped)
                if ok:
                    flags[tid] = True
                    exits[tid] = exit_escaped
            self.string_mask[entry_escaped] = torch.tensor(flags, dtype=torch.bool)
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

    def render(self, ids: list[int]) -> bytes:
        """The exact bytes of a token sequence, special tokens written as their text."""
        table, special = self.token_bytes, self.special_text
        return b"".join(
            table[i] if 0 <= i < len(table) and table[i] is not None else special.get(i, b"\x00") for i in ids
        )

    def encode_exact(self, tokenizer: Any, text: str, split_special_tokens: bool = True) -> list[int]:
        """Token ids whose bytes are exactly ``text``.

        SentencePiece tokenizers may prepend "▁" (a space) to a text they encode, and after each
        special token too: a value encoded alone would then start with a space in training and
        in inference. When the plain encoding is not exact: special tokens are split off and the
        plain pieces encoded one by one; a lone leading "▁" is dropped; failing that, the text is
        encoded after a newline whose tokens are cut off. Should nothing be exact (a normalising
        tokenizer), the plain encoding is kept, as before."""
        ids = tokenizer.encode(text, add_special_tokens=False, split_special_tokens=split_special_tokens)
        want = text.encode("utf-8")
        if self.render(ids) == want:
            return ids
        if not split_special_tokens:
            pieces = self._split_specials(text)
            if len(pieces) > 1 or isinstance(pieces[0], int):
                out: list[int] = []
                for piece in pieces:
                    out.extend([piece] if isinstance(piece, int) else self.encode_exact(tokenizer, piece))
                if self.render(out) == want:
                    return out
        if ids and self.token_bytes[ids[0]] == b" " and self.render(ids[1:]) == want:
            return ids[1:]
        longer = tokenizer.encode("\n" + text, add_special_tokens=False, split_special_tokens=split_special_tokens)
        for cut in range(1, min(len(longer), 4)):
            if self.render(longer[cut:]) == want:
                return longer[cut:]
        return ids

    def _split_specials(self, text: str) -> list[str | int]:
        """``text`` cut into plain pieces and special-token ids (longest special first)."""
        specials = sorted(
            ((data.decode("utf-8", "replace"), tid) for tid, data in self.special_text.items() if data),
            key=lambda item: -len(item[0]),
        )
        pieces: list[str | int] = []
        rest = text
        while rest:
            hits = [(rest.find(s), -len(s), s, tid) for s, tid in specials if s in rest]
            if not hits:
                pieces.append(rest)
                break
            at, _, special, tid = min(hits)
            if at:
                pieces.append(rest[:at])
            pieces.append(tid)
            rest = rest[at + len(special) :]
        return pieces or [text]
