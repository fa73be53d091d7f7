"""The batched sampler picks what a per-row masked argmax over full logits picks, and a row's pick
never depends on the other rows of its batch."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from hyfunc.cascade.sampler import SPARSE_MAX, BatchSampler
from hyfunc.cascade.template import Generate

VOCAB, WIDTH = 1500, 16


def reference_pick(head: nn.Module, hidden: torch.Tensor, step: Generate, vocab: int) -> int:
    """One row, the way the decoder picked before the sampler: full logits, mask, argmax; with a
    bias, log-softmax over the allowed tokens plus the prior (product of experts)."""
    logits = head(hidden).float()[:vocab]
    if isinstance(step.allowed, torch.Tensor):
        mask = torch.zeros(vocab, dtype=torch.bool)
        n = min(vocab, step.allowed.numel())
        mask[:n] = step.allowed[:n]
        return int(torch.argmax(logits.masked_fill(~mask, float("-inf"))))
    inside = [k for k, t in enumerate(step.allowed) if 0 <= t < vocab]
    allowed = torch.tensor([step.allowed[k] for k in inside])
    if step.bias is not None:
        scores = torch.log_softmax(logits[allowed], dim=-1) + torch.tensor([step.bias[k] for k in inside])
        return int(allowed[int(torch.argmax(scores))])
    masked = torch.full_like(logits, float("-inf"))
    masked[allowed] = logits[allowed]
    return int(torch.argmax(masked))


def random_steps(rng: random.Random, rows: int, masks: list[torch.Tensor]) -> list[Generate]:
    steps = []
    for _ in range(rows):
        kind = rng.choice(["mask", "short", "long", "one", "bias", "outside"])
        if kind == "mask":
            steps.append(Generate(rng.choice(masks)))
        elif kind == "short":
            steps.append(Generate(rng.sample(range(VOCAB), rng.randint(2, 40))))  # unsorted on purpose
        elif kind == "long":
            steps.append(Generate(rng.sample(range(VOCAB), SPARSE_MAX + rng.randint(1, 200))))
        elif kind == "one":
            steps.append(Generate([rng.randrange(VOCAB)]))
        elif kind == "bias":
            ids = rng.sample(range(VOCAB), rng.randint(2, 6))
            steps.append(Generate(ids, None, [rng.uniform(-3, 0) for _ in ids]))
        else:  # ids past the LM head (a tokenizer larger than the head) are ignored
            steps.append(Generate([VOCAB + 3, rng.randrange(VOCAB), rng.randrange(VOCAB), VOCAB + 9]))
    return steps


@pytest.fixture(params=[False, True], ids=["linear", "linear+bias"])
def head(request) -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(WIDTH, VOCAB, bias=request.param)


@pytest.mark.parametrize("seed", range(6))
def test_batched_picks_equal_per_row_reference(head, seed) -> None:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    masks = [torch.rand(VOCAB + rng.choice([0, 50])) < p for p in (0.5, 0.9, 0.01)]
    for m in masks:
        m[rng.randrange(VOCAB)] = True
    rows = rng.randint(1, 24)
    hidden = torch.randn(rows, WIDTH)
    steps = random_steps(rng, rows, masks)
    sampler = BatchSampler(head, VOCAB)
    with torch.inference_mode():
        batched = sampler.pick(hidden, steps)
        alone = [sampler.pick(hidden[r : r + 1], [steps[r]])[0] for r in range(rows)]
        reference = [reference_pick(head, hidden[r], steps[r], VOCAB) for r in range(rows)]
    assert batched == alone
    assert batched == reference
    for step, token in zip(steps, batched, strict=True):
        assert step.permits(token)


def test_ties_go_to_the_lowest_id() -> None:
    head = nn.Linear(WIDTH, VOCAB, bias=False)
    with torch.no_grad():
        head.weight.zero_()
    sampler = BatchSampler(head, VOCAB)
    hidden = torch.randn(3, WIDTH)
    mask = torch.zeros(VOCAB, dtype=torch.bool)
    mask[[700, 20, 900]] = True
    assert sampler.pick(hidden, [Generate([9, 5, 7]), Generate(mask), Generate(list(range(1400, 100, -1)))]) == [5, 20, 101]


def test_a_mask_edited_in_place_is_read_again() -> None:
    torch.manual_seed(1)
    head = nn.Linear(WIDTH, VOCAB)
    sampler = BatchSampler(head, VOCAB)
    hidden = torch.randn(1, WIDTH)
    mask = torch.zeros(VOCAB, dtype=torch.bool)
    mask[3] = True
    assert sampler.pick(hidden, [Generate(mask)]) == [3]
    mask[3], mask[4] = False, True
    assert sampler.pick(hidden, [Generate(mask)]) == [4]


def test_bad_steps_fail_clearly() -> None:
    sampler = BatchSampler(nn.Linear(WIDTH, VOCAB), VOCAB)
    hidden = torch.randn(1, WIDTH)
    with pytest.raises(RuntimeError, match="inside the LMS vocabulary"):
        sampler.pick(hidden, [Generate([VOCAB, VOCAB + 1])])
    with pytest.raises(ValueError, match="one value per allowed token"):
        sampler.pick(hidden, [Generate([1, 2], None, [0.0])])
    with pytest.raises(ValueError, match="one row per step"):
        sampler.pick(torch.randn(2, WIDTH), [Generate([1, 2])])
    assert sampler.pick(torch.randn(0, WIDTH), []) == []


def test_sparse_rows_skip_the_full_head() -> None:
    """Rows with short allowed lists never call the LM head module (only its rows are read)."""

    class CountingHead(nn.Linear):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            CountingHead.calls += 1
            return super().forward(x)

    head = CountingHead(WIDTH, VOCAB)
    sampler = BatchSampler(head, VOCAB)
    with torch.inference_mode():
        picks = sampler.pick(torch.randn(4, WIDTH), [Generate([1, 2, 3]), Generate([7]), Generate([5, 9]), Generate([4, 8])])
    assert CountingHead.calls == 0 and picks[1] == 7


def test_bfloat16_batched_equals_one_at_a_time() -> None:
    """A bfloat16 model: each row's pick is still independent of its batch."""
    rng = random.Random(7)
    torch.manual_seed(7)
    head = nn.Linear(WIDTH, VOCAB, bias=False).to(torch.bfloat16)
    masks = [torch.rand(VOCAB) < 0.5]
    steps = random_steps(rng, 20, masks)
    hidden = torch.randn(20, WIDTH, dtype=torch.bfloat16)
    sampler = BatchSampler(head, VOCAB)
    with torch.inference_mode():
        batched = sampler.pick(hidden, steps)
        alone = [sampler.pick(hidden[r : r + 1], [steps[r]])[0] for r in range(20)]
    assert batched == alone
    assert all(step.permits(token) for step, token in zip(steps, batched, strict=True))
