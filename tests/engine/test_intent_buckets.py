"""The LML's length buckets: each query read once, padding bounded, soft tokens as if read alone."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hyfunc.cascade.widths import length_buckets


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=600), max_size=64), st.floats(min_value=0.0, max_value=2.0))
def test_every_query_in_one_bucket_and_padding_bounded(lengths, slack):
    buckets = length_buckets(lengths, slack)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for bucket in buckets:
        real = [max(1, lengths[i]) for i in bucket]
        # A bucket's padded size stays within the slack, except a lone query (nothing to pad).
        assert len(bucket) == 1 or len(bucket) * max(real) <= (1 + slack) * sum(real) + 1e-9
    # Shortest first, never overlapping in length.
    tops = [max(lengths[i] for i in b) for b in buckets]
    bottoms = [min(lengths[i] for i in b) for b in buckets]
    assert all(t <= b for t, b in zip(tops, bottoms[1:], strict=False))


def test_all_equal_lengths_make_one_pass():
    assert length_buckets([7] * 32) == [list(range(32))]


def test_bucketed_soft_tokens_equal_each_query_alone(cascade):
    queries = [
        "weather in Paris",
        "email bob@example.com about the quarterly report that is due on friday and cc alice and carol",
        "book a table",
        "convert 12 dollars to euros please, at today's rate, and tell me the fee",
        "hi",
    ]
    intent = cascade.intent
    buckets = intent.buckets(queries)
    assert len(buckets) > 1  # these lengths differ enough to split
    before = intent.forward_passes
    together = intent.soft_tokens(queries)
    assert intent.forward_passes - before == len(buckets)
    for i, query in enumerate(queries):
        alone = intent.soft_tokens([query])
        assert together.prompt_tokens[i] == alone.prompt_tokens[0]
        torch.testing.assert_close(together.soft_tokens[i], alone.soft_tokens[0], rtol=1e-4, atol=1e-5)
