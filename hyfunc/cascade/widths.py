"""How wide a decode pass is: rows feed at most W tokens of their chunk per pass.

A decode pass appends one right-padded chunk per row: the token the row just generated plus what
the template machine injected after it. Most chunks are one token, a few (a call's closing and
the next call's opening, an object's keys) are 5–20, and a pass padded to the widest row costs
rows x width: on a CPU, or any compute-bound device, most of that is padding (32 demo jobs: 1,958
real tokens fed as 5,192). With a width cap W a row feeds the first W tokens of its chunk and
carries the rest to the next pass, making its next decision only when the chunk is all fed; the
tokens fed, and so the calls, are the same.

W is chosen per pass to minimise the pass's cost per token fed, with cost = overhead + rows x W in
token units: ``overhead`` is what a pass costs beyond its tokens (kernel launches, weight reads,
Python), fitted online from the decode passes' own timings (least squares of seconds on padded
tokens) or fixed by ``cascade.pass_overhead_tokens``. A large overhead keeps the widest chunk (one
pass per decision, no carry); a small one trims the outliers. One row is never split (no padding).

Prompts are not carried (a prompt fed over many passes would delay its row's first decision by
as many passes); rows joining the batch are instead prefilled in length groups, one pass each,
the partition of their sorted lengths that minimises the sum over groups of (overhead + rows x
longest): one job whose candidates missed the prefix cache (160 prompt tokens) no longer pads 28
jobs that hit it (40 tokens) to its width.
"""

from __future__ import annotations

import math
from collections import deque


class WidthPolicy:
    def __init__(self, overhead_tokens: float | None = None, window: int = 64, min_samples: int = 8):
        if overhead_tokens is not None and (overhead_tokens < 0 or math.isnan(overhead_tokens)):
            raise ValueError(f"pass overhead must be >= 0 tokens, got {overhead_tokens}")
        self.fixed = overhead_tokens
        self.samples: deque[tuple[int, float]] = deque(maxlen=window)  # (padded tokens, seconds)
        self.min_samples = min_samples
        self.carried = 0  # tokens moved to a later pass (exact)
        self.padded_saved = 0  # padded tokens not computed, vs padding every row to its whole chunk

    def observe(self, padded_tokens: int, seconds: float) -> None:
        self.samples.append((padded_tokens, seconds))

    def overhead(self) -> float:
        """A pass's fixed cost in token units; inf until enough passes of different sizes were timed."""
        if self.fixed is not None:
            return self.fixed
        if len(self.samples) < self.min_samples:
            return math.inf
        n = len(self.samples)
        mx = sum(x for x, _ in self.samples) / n
        my = sum(y for _, y in self.samples) / n
        sxx = sum((x - mx) ** 2 for x, _ in self.samples)
        if sxx <= 0:
            return math.inf
        slope = sum((x - mx) * (y - my) for x, y in self.samples) / sxx
        if slope <= 0:
            return math.inf  # time does not grow with tokens here: padding is free, never split
        return max(0.0, (my - slope * mx) / slope)

    def groups(self, lengths: list[int]) -> list[list[int]]:
        """Indices of ``lengths`` in prefill groups (shortest first); one group while uncalibrated."""
        return partition(lengths, self.overhead())

    def width(self, lengths: list[int]) -> int:
        widest = max(lengths)
        if len(lengths) == 1 or widest == 1:
            return widest
        alpha = self.overhead()
        if math.isinf(alpha):
            return widest
        rows = len(lengths)

        def cost_per_token(w: int) -> float:
            return (alpha + rows * w) / sum(min(n, w) for n in lengths)

        # Ties go to the wider pass: fewer carried tokens, decisions sooner.
        best = min(sorted(set(lengths), reverse=True), key=cost_per_token)
        self.carried += sum(max(0, n - best) for n in lengths)
        self.padded_saved += rows * (widest - best)
        return best


def partition(lengths: list[int], overhead: float) -> list[list[int]]:
    """Indices grouped into passes, minimising the sum over passes of (overhead + rows x widest):
    an exact dynamic programme over the lengths in sorted order (an optimal grouping of padded
    passes is contiguous in length). Infinite overhead: one pass."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if math.isinf(overhead) or len(order) <= 1:
        return [order] if order else []
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: cheapest cost of the first j sorted lengths
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        widest = lengths[order[j - 1]]
        for i in range(j):
            cost = best[i] + overhead + (j - i) * widest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def length_buckets(lengths: list[int], pad_slack: float = 0.25) -> list[list[int]]:
    """Indices grouped into passes by length where no pass overhead is known (the LML): sorted by
    length, each bucket closed before padding it to its longest member would exceed
    (1 + pad_slack) x its real tokens. Every index lands in exactly one bucket, shortest first."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        n = max(1, lengths[i])
        if current and (len(current) + 1) * n > (1 + pad_slack) * (real + n):
            buckets.append(current)
            current, real = [], 0
        current.append(i)
        real += n
    if current:
        buckets.append(current)
    return buckets
