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
