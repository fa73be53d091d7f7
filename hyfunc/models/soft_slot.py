"""The soft-token slot `<|soft|>`: one special token, added the same way for every tokenizer.

Training and inference both call `ensure_soft_slot`, so a pretrained checkpoint (which has never
heard of the slot) gets the same token id and an embedding row for it whichever path loads it.
The slot's input embedding is always replaced by the projected soft token; its new row (and, for
an untied head, its output row) is set to the mean of the existing rows, deterministically, so a
merged model and the base + adapter it came from compute the same logits.
"""

from __future__ import annotations

import torch

SOFT_TOKEN = "<|soft|>"  # the soft-token slot: its input embedding is the projected LML soft token
# The template machine's "write this value, do not copy it" decision (hyfunc/cascade/template.py):
# in the model's context, never in the answer text.
WRITE_MARKER = "<|write|>"


def ensure_soft_slot(tokenizer, model=None) -> int:
    """Add `<|soft|>` as a special token when the tokenizer lacks it and give ``model`` an embedding
    row for it when its table is too small. Returns the slot's token id. Idempotent."""
    return _ensure_special_token(tokenizer, model, SOFT_TOKEN)


def ensure_write_marker(tokenizer, model=None) -> int:
    """Add the template machine's write marker (`<|write|>`, chosen instead of copying a value
    from the query) the way `ensure_soft_slot` adds the slot: a special token and a row that is
    the mean of the others, so training and every load agree without shipping the row."""
    return _ensure_special_token(tokenizer, model, WRITE_MARKER)


def _ensure_special_token(tokenizer, model, text: str) -> int:
    if text not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [text]}, replace_extra_special_tokens=False)
    token_id = int(tokenizer.convert_tokens_to_ids(text))
    if model is not None:
        rows = int(model.get_input_embeddings().weight.shape[0])
        if token_id >= rows:
            _grow_embeddings(model, max(len(tokenizer), token_id + 1))
    return token_id


@torch.no_grad()
def _grow_embeddings(model, rows: int) -> None:
    old = int(model.get_input_embeddings().weight.shape[0])
    model.resize_token_embeddings(rows, mean_resizing=False)
    tables = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != tables[0].data_ptr():
        tables.append(head.weight)
    for weight in tables:
        weight[old:] = weight[:old].mean(dim=0, keepdim=True)


def fill_soft_slots(embed, ids: torch.Tensor, soft_id: int, pad_id: int, soft) -> torch.Tensor:
    """Input embeddings of `ids` (B, T) with each row's `<|soft|>` slots holding its projected soft
    tokens, in order (`soft[r]`: (slots in row r, width), or None for a row without slots). The one
    slot fill of training and inference, so both feed the model the same embeddings."""
    slots = ids == soft_id
    embeds = embed(ids.masked_fill(slots, pad_id))
    if not bool(slots.any()):
        return embeds
    if torch.is_grad_enabled():  # training: leave the embedding op's output to autograd
        embeds = embeds.clone()
    for r in range(ids.shape[0]):
        where = slots[r].nonzero(as_tuple=True)[0]
        if where.numel():
            given = soft[r]
            if given is None or given.shape[0] != where.numel():
                raise ValueError("soft-token slots and projected soft tokens disagree in number")
            embeds[r, where] = given.to(embeds.dtype)
    return embeds
