"""The radix prefix cache on its own: longest-prefix lookups, node splits, LRU eviction in bytes.

The KV stored for a token here is a fingerprint of the whole prefix up to it (as a real KV
depends on every earlier token), so a lookup that returned the KV of the wrong run shows up.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hyfunc.cascade.prefix_cache import PrefixCache, kv_length, kv_nbytes

LAYERS, HEADS, DIM = 2, 2, 3


def fake_kv(tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) of shape (heads, len, dim); entry i encodes tokens[: i + 1]."""
    prints = []
    acc = 0
    for t in tokens:
        acc = (acc * 1_000_003 + t + 1) % 1_000_000_007
        prints.append(float(acc % 65_521))
    base = torch.tensor(prints).view(1, -1, 1).expand(HEADS, -1, DIM)
    return [(base + layer, -base - layer) for layer in range(LAYERS)]


def entry_bytes(n: int) -> int:
    return LAYERS * 2 * HEADS * n * DIM * 4


def check(cache: PrefixCache, tokens: list[int], expect_len: int) -> None:
    found = cache.match(tokens)
    assert found.length == expect_len
    if expect_len == 0:
        assert found.kv is None
        return
    assert found.kv is not None and kv_length(found.kv) == expect_len
    want = fake_kv(tokens[:expect_len])
    for (k, v), (wk, wv) in zip(found.kv, want, strict=True):
        assert torch.equal(k, wk) and torch.equal(v, wv)


def test_longest_prefix_and_split() -> None:
    cache = PrefixCache(10**9)
    a = [1, 2, 3, 4, 5, 6]
    assert cache.insert(a, fake_kv(a)) == 6
    check(cache, [1, 2, 3, 9], 3)  # diverges inside the run: its first 3 tokens are reused
    check(cache, a + [7, 8], 6)
    check(cache, [9, 1, 2], 0)
    b = [1, 2, 3, 7, 7]
    assert cache.insert(b, fake_kv(b)) == 2  # only the part after the shared "1 2 3" is new
    assert len(cache) == 3  # [1 2 3] -> {[4 5 6], [7 7]}
    check(cache, a, 6)
    check(cache, b, 5)
    assert cache.tokens == 8 and cache.nbytes == entry_bytes(8)
    assert cache.insert(a[:4], fake_kv(a[:4])) == 0  # already cached: nothing stored twice
    assert cache.tokens == 8


def test_lru_eviction_by_bytes() -> None:
    cache = PrefixCache(entry_bytes(10))
    shared = [5, 5, 5, 5]
    first, second, third = shared + [1, 1, 1], shared + [2, 2, 2], shared + [3, 3, 3]
    cache.insert(first, fake_kv(first))
    cache.insert(second, fake_kv(second))  # 4 shared + 3 + 3 = 10 tokens: fits exactly
    assert cache.nbytes == entry_bytes(10)
    cache.match(first)  # first is now more recent than second
    cache.insert(third, fake_kv(third))  # over budget: the least recently used leaf goes
    assert cache.nbytes <= cache.max_bytes
    check(cache, second, 4)  # its own run was evicted; the shared run stays
    check(cache, first, 7)
    check(cache, third, 7)
    assert cache.stats.evicted_tokens == 3


def test_entry_larger_than_budget_is_not_kept() -> None:
    cache = PrefixCache(entry_bytes(3))
    long = list(range(10))
    cache.insert(long, fake_kv(long))
    assert cache.nbytes == 0 and cache.tokens == 0
    check(cache, long, 0)


def test_zero_budget_disables_storage() -> None:
    cache = PrefixCache(0)
    assert cache.insert([1, 2], fake_kv([1, 2])) == 0
    assert cache.match([1, 2]).length == 0


def test_mismatched_kv_length_is_rejected() -> None:
    cache = PrefixCache(10**6)
    try:
        cache.insert([1, 2, 3], fake_kv([1, 2]))
    except ValueError as err:
        assert "covers 2 tokens" in str(err)
    else:
        raise AssertionError("a KV of the wrong length was accepted")


sequences = st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=12), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(sequences, st.lists(st.integers(0, 4), min_size=1, max_size=12))
def test_unbounded_cache_matches_the_longest_common_prefix(inserted: list[list[int]], probe: list[int]) -> None:
    cache = PrefixCache(10**9)
    for seq in inserted:
        cache.insert(seq, fake_kv(seq))
    def lcp(a: list[int], b: list[int]) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n
    expect = max(lcp(seq, probe) for seq in inserted)
    assert cache.matched_length(probe) == expect
    check(cache, probe, expect)
    # Every distinct token path is stored exactly once.
    paths = {tuple(seq[:i]) for seq in inserted for i in range(1, len(seq) + 1)}
    assert cache.tokens == len(paths)
    assert cache.nbytes == entry_bytes(len(paths)) == sum(kv_nbytes(n.kv) for n in cache._nodes())


@settings(max_examples=60, deadline=None)
@given(sequences, st.integers(1, 30))
def test_bounded_cache_stays_within_budget_and_correct(inserted: list[list[int]], budget_tokens: int) -> None:
    cache = PrefixCache(entry_bytes(budget_tokens))
    for seq in inserted:
        cache.insert(seq, fake_kv(seq))
        assert cache.nbytes <= cache.max_bytes
        assert cache.nbytes == sum(kv_nbytes(n.kv) for n in cache._nodes())
    for seq in inserted:
        check(cache, seq, cache.matched_length(seq))  # whatever survived is the right KV
