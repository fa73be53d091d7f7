"""hyfunc_cpu attention equals SDPA's (small queries by matmuls, the rest by SDPA itself)."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hyfunc.cascade.attention import SMALL_QUERY, small_query_attention


class _Module(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("q_len", [1, 2, 5, SMALL_QUERY, SMALL_QUERY + 3])
@pytest.mark.parametrize(("q_heads", "kv_heads"), [(6, 2), (4, 4), (9, 3)])
@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
def test_matches_sdpa(q_len, q_heads, kv_heads, mask_kind):
    torch.manual_seed(q_len * 100 + q_heads)
    batch, keys, dim = 3, 17 + q_len, 16
    query = torch.randn(batch, q_heads, q_len, dim)
    key = torch.randn(batch, kv_heads, keys, dim)
    value = torch.randn(batch, kv_heads, keys, dim)
    allowed = torch.rand(batch, 1, q_len, keys) > 0.3
    allowed[..., -1] = True  # every query row attends to something
    mask = {"bool": allowed, "float": torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min),
            "none": None}[mask_kind]
    module = _Module(q_heads // kv_heads)
    ours, _ = small_query_attention(module, query, key, value, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert ours.shape == theirs.shape == (batch, q_len, q_heads, dim)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
