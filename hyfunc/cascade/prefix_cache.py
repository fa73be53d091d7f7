"""A token-level radix cache of prompt KV, LRU-bounded in bytes (the idea of SGLang's
RadixAttention and vLLM's automatic prefix caching, written for this decoder).

Keys are token-id sequences (the job prompt after the shared system prefix), values the
per-layer key/value tensors the LMS computed for exactly those tokens in that context. The
KV of a token depends on every token before it, so only a *prefix* can be reused: the tree's
edges are token runs, and a lookup walks it as far as the new prompt agrees, returning the KV
of that prefix. Jobs whose candidate schemas come in the same (canonical) order share the
schemas' KV, and the job prefills only its query and whatever differs.

Entries are immutable tensors: a lookup concatenates copies into the batch's cache, so
evicting a node never invalidates a running row. Eviction removes least recently used leaves
until the cache fits ``max_bytes`` (a parent becomes a leaf, and so evictable, once its last
child goes); an entry larger than the whole budget is simply not kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

# Per layer (keys, values), each (kv_heads, tokens, head_dim): one row's KV for a token run.
LayerKV = tuple[torch.Tensor, torch.Tensor]
KV = list[LayerKV]


def kv_nbytes(kv: KV) -> int:
    return sum(k.nbytes + v.nbytes for k, v in kv)


def kv_length(kv: KV) -> int:
    return int(kv[0][0].shape[-2]) if kv else 0


def kv_slice(kv: KV, start: int, end: int) -> KV:
    """Tokens [start, end) of ``kv`` as tensors of their own (a view would pin the whole run)."""
    return [(k[..., start:end, :].clone(), v[..., start:end, :].clone()) for k, v in kv]


def kv_cat(parts: Sequence[KV]) -> KV:
    if len(parts) == 1:
        return parts[0]
    layers = len(parts[0])
    return [
        (torch.cat([p[i][0] for p in parts], dim=-2), torch.cat([p[i][1] for p in parts], dim=-2)) for i in range(layers)
    ]


@dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...]  # the edge from the parent: this node's token run
    kv: KV  # the run's KV (empty at the root)
    parent: _Node | None = None
    children: dict[int, _Node] = field(default_factory=dict)  # first token of the child's run -> child
    last_used: int = 0

    @property
    def nbytes(self) -> int:
        return kv_nbytes(self.kv)


@dataclass
class PrefixMatch:
    length: int  # tokens of the query sequence covered
    kv: KV | None  # their KV (None when length == 0)


@dataclass
class CacheStats:
    lookups: int = 0
    hit_tokens: int = 0  # tokens served from the cache over all lookups
    inserted_tokens: int = 0  # tokens newly stored
    evicted_tokens: int = 0


class PrefixCache:
    """Radix tree over token ids -> KV, LRU-bounded in bytes."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"prefix cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.root = _Node((), [])
        self.nbytes = 0
        self.tokens = 0  # tokens stored
        self.stats = CacheStats()
        self._clock = itertools.count(1)

    def __len__(self) -> int:
        """Nodes in the tree, the root excluded."""
        count, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            count += len(node.children)
            stack.extend(node.children.values())
        return count

    # -- lookup ---------------------------------------------------------------------------------

    def match(self, tokens: Sequence[int]) -> PrefixMatch:
        """The longest cached prefix of ``tokens`` and its KV; marks the path as recently used."""
        self.stats.lookups += 1
        now = next(self._clock)
        node, pos, parts = self.root, 0, []
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                break
            run = child.tokens
            n = _common(run, tokens, pos)
            child.last_used = now
            if n < len(run):  # the prompt diverges inside this run: reuse its first n tokens
                parts.append([(k[..., :n, :], v[..., :n, :]) for k, v in child.kv])
                pos += n
                break
            parts.append(child.kv)
            pos += n
            node = child
        self.stats.hit_tokens += pos
        return PrefixMatch(pos, kv_cat(parts) if parts else None)

    def matched_length(self, tokens: Sequence[int]) -> int:
        """How many leading tokens are cached, without touching LRU order or stats."""
        node, pos = self.root, 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                break
            n = _common(child.tokens, tokens, pos)
            pos += n
            if n < len(child.tokens):
                break
            node = child
        return pos

    # -- insertion ------------------------------------------------------------------------------

    def insert(self, tokens: Sequence[int], kv: KV) -> int:
        """Store the KV of ``tokens`` (``kv`` covers exactly them). Parts already cached are kept
        as they are; returns the number of tokens newly stored (before any eviction)."""
        if kv_length(kv) != len(tokens):
            raise ValueError(f"KV covers {kv_length(kv)} tokens but {len(tokens)} token ids were given")
        if self.max_bytes == 0 or not tokens:
            return 0
        now = next(self._clock)
        node, pos = self.root, 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                leaf = _Node(tuple(tokens[pos:]), kv_slice(kv, pos, len(tokens)), node, last_used=now)
                node.children[tokens[pos]] = leaf
                self._account(leaf, +1)
                added = len(tokens) - pos
                self.stats.inserted_tokens += added
                self._evict(keep=leaf)
                return added
            n = _common(child.tokens, tokens, pos)
            child.last_used = now
            if n < len(child.tokens):
                child = self._split(child, n)
            pos += n
            node = child
        return 0

    def _split(self, node: _Node, n: int) -> _Node:
        """Cut ``node``'s run after n tokens; returns the new upper half (the parent of the rest)."""
        assert node.parent is not None and 0 < n < len(node.tokens)
        upper = _Node(node.tokens[:n], kv_slice(node.kv, 0, n), node.parent, last_used=node.last_used)
        node.parent.children[node.tokens[0]] = upper
        lower_kv = kv_slice(node.kv, n, len(node.tokens))
        node.tokens, node.kv, node.parent = node.tokens[n:], lower_kv, upper
        upper.children[node.tokens[0]] = node
        return upper

    # -- eviction -------------------------------------------------------------------------------

    def _account(self, node: _Node, sign: int) -> None:
        self.nbytes += sign * node.nbytes
        self.tokens += sign * len(node.tokens)

    def _evict(self, keep: _Node | None = None) -> None:
        if self.nbytes <= self.max_bytes:
            return
        leaves = [n for n in self._nodes() if not n.children and n is not keep]
        leaves.sort(key=lambda n: n.last_used)
        while self.nbytes > self.max_bytes:
            if not leaves:
                if keep is not None and keep.parent is not None:
                    # The new entry alone is larger than the budget: drop it too.
                    self._remove(keep)
                    keep = None
                    leaves = [n for n in self._nodes() if not n.children]
                    leaves.sort(key=lambda n: n.last_used)
                    continue
                break
            victim = leaves.pop(0)
            parent = self._remove(victim)
            if parent is not None and parent is not self.root and not parent.children and parent is not keep:
                # Keep the list ordered: the parent was used no later than its children.
                at = next((i for i, n in enumerate(leaves) if n.last_used > parent.last_used), len(leaves))
                leaves.insert(at, parent)

    def _remove(self, node: _Node) -> _Node | None:
        parent = node.parent
        assert parent is not None
        del parent.children[node.tokens[0]]
        self._account(node, -1)
        self.stats.evicted_tokens += len(node.tokens)
        node.parent = None
        return parent

    def _nodes(self) -> list[_Node]:
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def clear(self) -> None:
        self.root = _Node((), [])
        self.nbytes = 0
        self.tokens = 0


def _common(run: tuple[int, ...], tokens: Sequence[int], pos: int) -> int:
    n = 0
    limit = min(len(run), len(tokens) - pos)
    while n < limit and run[n] == tokens[pos + n]:
        n += 1
    return n
