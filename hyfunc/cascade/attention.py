"""LMS attention on a CPU: small queries by plain matrix products, the rest by PyTorch's SDPA.

A decode pass asks attention for one query row (or a few) per sequence against a few hundred
cached keys. On a CPU, SDPA's flash kernel spends ~2 ms per layer on that in bfloat16 (29 rows x
9 heads x 200 keys, SmolLM2-135M: 74 % of a decode pass) where two matmuls and a softmax take
0.36 ms; for prompt-sized queries the kernel is the faster one. ``hyfunc_cpu`` routes by query
length and is registered with transformers' AttentionInterface (and its boolean SDPA masks), so a
model uses it with ``model.set_attn_implementation("hyfunc_cpu")``; the result is the same
attention (softmax in float32), only computed differently.
"""

from __future__ import annotations

import logging

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

log = logging.getLogger(__name__)

NAME = "hyfunc_cpu"
SMALL_QUERY = 8  # query rows per sequence up to which the matmul path runs


def small_query_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    special = any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "sinks", "position_bias"))
    # No mask with several queries means "causal" (SDPA's is_causal): left to SDPA.
    implicit_causal = attention_mask is None and query.shape[2] > 1
    if query.shape[2] > SMALL_QUERY or query.device.type != "cpu" or dropout or special or implicit_causal:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    batch, q_heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = q_heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    # Grouped-query attention without repeating the KV: query head h reads KV head h // groups.
    q = query.reshape(batch, kv_heads, groups * q_len, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale
    if attention_mask is not None:
        scores = scores.view(batch, kv_heads, groups, q_len, -1)
        mask = attention_mask[:, :, None] if attention_mask.dim() == 4 else attention_mask
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
        scores = scores.view(batch, kv_heads, groups * q_len, -1)
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value).view(batch, q_heads, q_len, value.shape[-1])
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, small_query_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_cpu_attention(model: torch.nn.Module) -> bool:
    """Switch a model served on a CPU to ``hyfunc_cpu`` where it uses SDPA today; True if switched."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, NotImplementedError) as err:
        # A model whose attention is not dispatched through transformers' AttentionInterface
        # cannot take a registered implementation; it keeps SDPA (correct, only slower).
        log.info("LMS keeps SDPA attention on the CPU: %s", err)
        return False
    return True
