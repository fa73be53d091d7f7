"""Narrower decode passes (hyfunc/cascade/widths.py): a row feeds the head of its chunk and
carries the rest; the tokens fed, and so every call and token count, are unchanged."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decoder import SPECS, make_job

from hyfunc.cascade.decoder import LMSDecoder
from hyfunc.cascade.widths import WidthPolicy


def test_one_row_or_unit_chunks_are_never_split():
    policy = WidthPolicy(0.0)
    assert policy.width([17]) == 17
    assert policy.width([1, 1, 1]) == 1
    assert policy.carried == 0


def test_overhead_sets_the_width():
    lengths = [1] * 15 + [17]
    # No overhead: pay for no padding at all (every row feeds one token).
    assert WidthPolicy(0.0).width(lengths) == 1
    # A pass that costs as much as 1,000 tokens: never worth a second pass.
    assert WidthPolicy(1000.0).width(lengths) == 17
    # Uncalibrated: the widest chunk (no split until passes were timed).
    assert WidthPolicy(None).width(lengths) == 17


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=32), st.floats(min_value=0, max_value=500))
def test_the_chosen_width_is_the_cheapest_per_token(lengths, overhead):
    policy = WidthPolicy(overhead)
    width = policy.width(lengths)
    assert 1 <= width <= max(lengths)
    if len(lengths) > 1:
        def cost(w: int) -> float:
            return (overhead + len(lengths) * w) / sum(min(n, w) for n in lengths)

        assert all(cost(width) <= cost(w) + 1e-9 for w in range(1, max(lengths) + 1) if w in set(lengths))


def test_overhead_is_fitted_from_pass_timings():
    policy = WidthPolicy(None, min_samples=4)
    for tokens in (16, 32, 64, 128, 256, 16, 48):
        policy.observe(tokens, 0.002 + 0.0001 * tokens)  # 2 ms per pass + 0.1 ms per token
    assert policy.overhead() == pytest.approx(20.0, rel=1e-6)
    flat = WidthPolicy(None, min_samples=4)
    for tokens in (16, 32, 64, 128):
        flat.observe(tokens, 0.003)  # time does not grow with tokens: padding is free
    assert math.isinf(flat.overhead())
    with pytest.raises(ValueError):
        WidthPolicy(-1.0)


def test_split_passes_give_the_same_calls_and_tokens(tiny_bundle, machine, make_machine):
    def decoder(split: bool) -> LMSDecoder:
        return LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device,
                          split_chunks=split, pass_overhead_tokens=0.0 if split else None)

    whole, narrow = decoder(False), decoder(True)
    a = whole.decode([make_job(s, tiny_bundle, make_machine)[0] for s in SPECS])
    b = narrow.decode([make_job(s, tiny_bundle, make_machine)[0] for s in SPECS])
    assert narrow.widths is not None and narrow.widths.carried > 0  # something really was carried
    for x, y in zip(a, b, strict=True):
        assert x.error is None and y.error is None
        assert [c.model_dump() for c in x.calls] == [c.model_dump() for c in y.calls]
        for field in ("prompt_tokens", "injected", "generated", "fed_tokens"):
            assert getattr(x.stats, field) == getattr(y.stats, field), field
        assert x.stats.carry_passes == 0
        assert y.stats.forward_passes == y.stats.generated + y.stats.carry_passes
    assert sum(y.stats.carry_passes for y in b) > 0
    # Fewer padded tokens: every decode pass is as narrow as its cheapest width.
    assert narrow.widths.padded_saved > 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=200), max_size=24), st.floats(min_value=0, max_value=400))
def test_prefill_groups_are_the_cheapest_partition(lengths, overhead):
    """The dynamic programme's groups cover every row once and cost no more than one pass, than one
    pass per row, or than any split of the sorted lengths in two."""
    from hyfunc.cascade.widths import partition

    groups = partition(lengths, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))

    def cost(parts) -> float:
        return sum(overhead + len(p) * max(lengths[i] for i in p) for p in parts if p)

    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    rivals = [[order], [[i] for i in order]] + [[order[:k], order[k:]] for k in range(1, len(order))]
    assert all(cost(groups) <= cost(r) + 1e-6 for r in rivals if lengths)
    assert partition(lengths, math.inf) == ([order] if lengths else [])


def test_grouped_prefill_gives_the_same_calls(tiny_bundle, machine, make_machine):
    """Rows admitted together prefill in several length groups (one pass each) and decide as in one pass."""
    whole = LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device, split_chunks=False)
    grouped = LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device,
                         split_chunks=True, pass_overhead_tokens=1.0)
    a = whole.decode([make_job(s, tiny_bundle, make_machine)[0] for s in SPECS])
    before = grouped.forward_passes
    b = grouped.decode([make_job(s, tiny_bundle, make_machine)[0] for s in SPECS])
    assert grouped.forward_passes - before > max(r.stats.forward_passes for r in b)  # >1 prefill pass
    for x, y in zip(a, b, strict=True):
        assert [c.model_dump() for c in x.calls] == [c.model_dump() for c in y.calls]
        assert (x.stats.generated, x.stats.injected, x.stats.fed_tokens) == (y.stats.generated, y.stats.injected, y.stats.fed_tokens)
