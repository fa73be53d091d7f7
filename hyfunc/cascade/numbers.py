"""A JSON number recogniser, used to keep generated integers and numbers valid token by token."""

from __future__ import annotations

import math

# States of the JSON number grammar: -?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?
_START, _MINUS, _ZERO, _INT, _DOT, _FRAC, _E, _ESIGN, _EXP, _DEAD = range(10)
_ACCEPTING = {_ZERO, _INT, _FRAC, _EXP}
# Public names for the compiled per-vocabulary tables (hyfunc.cascade.constraints).
START, DEAD = _START, _DEAD
ACCEPTING = frozenset(_ACCEPTING)
EXPONENT_STATES = frozenset({_E, _ESIGN, _EXP})
# A number without an exponent overflows a double only past 308 integer digits.
OVERFLOW_FREE_LENGTH = 300


def _step(state: int, ch: str, integer: bool) -> int:
    digit = ch.isdigit()
    if state == _START:
        return _MINUS if ch == "-" else _ZERO if ch == "0" else _INT if digit else _DEAD
    if state == _MINUS:
        return _ZERO if ch == "0" else _INT if digit else _DEAD
    if state in (_ZERO, _INT):
        if digit:
            return _INT if state == _INT else _DEAD
        if integer:
            return _DEAD
        return _DOT if ch == "." else _E if ch in "eE" else _DEAD
    if state == _DOT:
        return _FRAC if digit else _DEAD
    if state == _FRAC:
        return _FRAC if digit else _E if ch in "eE" else _DEAD
    if state == _E:
        return _ESIGN if ch in "+-" else _EXP if digit else _DEAD
    if state in (_ESIGN, _EXP):
        return _EXP if digit else _DEAD
    return _DEAD


def number_step(state: int, text: str, integer: bool) -> int:
    """The state after feeding ``text`` (e.g. one token's characters) from ``state``."""
    for ch in text:
        state = _step(state, ch, integer)
        if state == _DEAD:
            break
    return state


def number_state(text: str, integer: bool) -> int:
    state = _START
    for ch in text:
        state = _step(state, ch, integer)
        if state == _DEAD:
            break
    return state


def is_complete_number(text: str, integer: bool) -> bool:
    return number_state(text, integer) in _ACCEPTING


def is_finite_number_prefix(text: str, integer: bool) -> bool:
    """A valid prefix that does not already overflow a double ("1e999" parses to inf, which is not JSON).

    More exponent digits only make an overflow worse, so rejecting the first overflowing token
    keeps every completion finite.
    """
    state = number_state(text, integer)
    if state == _DEAD:
        return False
    return not (state in _ACCEPTING and math.isinf(float(text)))


def completion_digit(text: str, integer: bool) -> str:
    """The shortest suffix that makes a valid prefix complete (used when a length cap is hit)."""
    return "" if is_complete_number(text, integer) else "0"
