"""The model runner: the LMS forward over one batched KV cache (transformers today).

The runner owns the batch's KV and attention mask and knows nothing of programs or jobs; the
scheduler tells it which rows to add (with the KV they start from), which to keep, and what
chunk each row appends next. Another backend replaces this class by implementing the same
small surface (``ModelRunner``).

Layout: one DynamicCache of (rows, kv_heads, L, head_dim) per layer and one (rows, L) 0/1 mask.
Each pass appends a right-padded chunk per row; pads stay in the cache but are masked out of
attention forever, and every row carries its own position ids (its count of real tokens), so
ragged rows never shift each other. Rows joining a running batch prefill their prompts in a
pass of their own (a joint pass would pad every running row to the prompt's width), then the
cache is rebuilt compactly (each row's real tokens gathered to the left), so the columns wasted
on pads do not grow with the life of the batch.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from transformers import DynamicCache

from hyfunc.cascade.kv_layer import capacity, growing_cache
from hyfunc.cascade.prefix_cache import KV, kv_length
from hyfunc.models.compat import cache_kwargs
from hyfunc.models.soft_slot import fill_soft_slots

# Prompt tokens per prefill pass of a long prompt. One pass over L new tokens builds attention
# scores and a mask of L x (cached + L) entries per head: a 33k-token prompt (an enum of 10,000
# values in its schema) asked for 25.7 GB at once. A prompt longer than this is fed one row at a
# time in slices of this many tokens, so the transient memory is this many query rows x the row's
# length — linear in the prompt — and the KV (linear anyway) is the same as one pass would leave.
PREFILL_SLICE_TOKENS = 512


class ModelRunner(Protocol):
    """What the decoder needs from a model backend."""

    lm_head: nn.Module
    vocab_size: int

    @property
    def rows(self) -> int: ...

    def encode_prefix(self, ids: list[int]) -> KV: ...

    def add_rows(self, kvs: list[KV]) -> None: ...

    def prefill(
        self, kvs: list[KV], chunks: list[list[int]], soft: list[torch.Tensor | None], groups: list[int] | None = None
    ) -> torch.Tensor: ...

    def keep_rows(self, index: list[int]) -> None: ...

    def forward(self, chunks: list[list[int]], soft: list[torch.Tensor | None]) -> torch.Tensor: ...

    def row_kv(self, row: int, start: int, end: int) -> KV: ...


class TransformersRunner:
    """ModelRunner over a Hugging Face causal LM (``model.base_model`` + its LM head)."""

    def __init__(self, model: nn.Module, pad_id: int, soft_id: int, device: torch.device):
        self.model = model
        self.base = model.base_model
        self.embed = model.get_input_embeddings()
        self.lm_head = model.get_output_embeddings()
        self.vocab_size = int(self.lm_head.weight.shape[0])
        self.pad_id = pad_id
        self.soft_id = soft_id
        self.device = device
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros(0, 0, dtype=torch.long, device=device)
        self._lengths: list[int] = []  # real tokens per row (= the next position id)

    @property
    def rows(self) -> int:
        return len(self._lengths)

    def lengths(self) -> list[int]:
        return list(self._lengths)

    @torch.inference_mode()
    def encode_prefix(self, ids: list[int]) -> KV:
        """The KV of a token run on an empty cache (one row), e.g. the shared system prompt."""
        cache = DynamicCache(config=self.model.config)
        self.base(input_ids=torch.tensor([ids], device=self.device), **cache_kwargs(cache), use_cache=True)
        return [(layer.keys[0], layer.values[0]) for layer in cache.layers]

    def _layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        assert self._cache is not None
        return [(layer.keys, layer.values) for layer in self._cache.layers]

    def _compact(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every row's real tokens gathered to the left: (rows, heads, max length, dim) per layer."""
        width = max(self._lengths)
        index = torch.zeros(self.rows, width, dtype=torch.long, device=self.device)
        for r in range(self.rows):
            cols = self._mask[r].nonzero(as_tuple=True)[0]
            index[r, : cols.numel()] = cols
        out = []
        for k, v in self._layers():
            gather = index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            out.append((k.gather(2, gather), v.gather(2, gather)))
        return out

    @torch.inference_mode()
    def add_rows(self, kvs: list[KV]) -> None:
        """New rows after the existing ones, each starting from the given KV (at least one token)."""
        if not kvs:
            return
        new_lengths = [kv_length(kv) for kv in kvs]
        if min(new_lengths) == 0:
            raise ValueError("a new row needs the KV of at least one token (the shared prefix)")
        old = self._compact() if self.rows else None
        lengths = self._lengths + new_lengths
        columns = capacity(max(lengths))  # spare columns: passes append in place
        layers = []
        for i in range(len(kvs[0])):
            k0, v0 = kvs[0][i]
            heads, dim = k0.shape[0], k0.shape[-1]
            keys = k0.new_zeros(len(lengths), heads, columns, dim)
            values = v0.new_zeros(len(lengths), heads, columns, dim)
            start = 0
            if old is not None:
                ok, ov = old[i]
                keys[: ok.shape[0], :, : ok.shape[2]] = ok
                values[: ov.shape[0], :, : ov.shape[2]] = ov
                start = ok.shape[0]
            for j, kv in enumerate(kvs):
                n = new_lengths[j]
                keys[start + j, :, :n] = kv[i][0]
                values[start + j, :, :n] = kv[i][1]
            layers.append((keys, values))
        self._install(layers, lengths)

    @torch.inference_mode()
    def prefill(
        self, kvs: list[KV], chunks: list[list[int]], soft: list[torch.Tensor | None], groups: list[int] | None = None
    ) -> torch.Tensor:
        """New rows, each starting from its KV, run their first chunk (the prompt) in passes of
        their own — one per group of ``groups`` consecutive rows (default: one pass) —, then join
        the batch in order; returns their last-position hidden states. Running rows never pay
        for a prompt's width: a joint pass would pad each of them to it."""
        groups = groups or [len(chunks)]
        if sum(groups) != len(chunks) or min(groups) < 1:
            raise ValueError(f"prefill groups {groups} do not cover {len(chunks)} rows")
        hidden = []
        start = 0
        for size in groups:
            part = slice(start, start + size)
            start += size
            if max(len(c) for c in chunks[part]) > PREFILL_SLICE_TOKENS:
                hidden.extend(self._prefill_sliced(kvs[r], chunks[r], soft[r]) for r in range(part.start, part.stop))
                continue
            if not self.rows:
                self.add_rows(kvs[part])
                hidden.append(self.forward(chunks[part], soft[part]))
                continue
            joining = TransformersRunner(self.model, self.pad_id, self.soft_id, self.device)
            joining.add_rows(kvs[part])
            hidden.append(joining.forward(chunks[part], soft[part]))
            self._merge(joining)
        return torch.cat(hidden) if len(hidden) > 1 else hidden[0]

    def _prefill_sliced(self, kv: KV, chunk: list[int], soft: torch.Tensor | None) -> torch.Tensor:
        """One new row whose prompt runs in slices of PREFILL_SLICE_TOKENS (see there), then joins
        the batch; returns its last-position hidden state (1, d). The slices see the same causal
        attention as one pass, so the KV and the hidden state are the same."""
        joining = TransformersRunner(self.model, self.pad_id, self.soft_id, self.device)
        joining.add_rows([kv])
        used = 0  # soft-token slots filled so far (each slice takes the ones it holds)
        last = None
        for begin in range(0, len(chunk), PREFILL_SLICE_TOKENS):
            piece = chunk[begin : begin + PREFILL_SLICE_TOKENS]
            slots = sum(1 for t in piece if t == self.soft_id)
            part = soft[used : used + slots] if soft is not None and slots else None
            used += slots
            last = joining.forward([piece], [part])
        assert last is not None
        self.join(joining)
        return last

    def join(self, other: TransformersRunner) -> None:
        """Take ``other``'s rows after this batch's (this one may be empty)."""
        if self.rows:
            self._merge(other)
        else:
            self._cache, self._mask, self._lengths = other._cache, other._mask, other._lengths

    def _merge(self, other: TransformersRunner) -> None:
        """Append ``other``'s rows after this batch's, both compacted to one width."""
        mine, theirs = self._compact(), other._compact()
        lengths = self._lengths + other._lengths
        columns = capacity(max(lengths))
        layers = []
        for (mk, mv), (tk, tv) in zip(mine, theirs, strict=True):
            keys = mk.new_zeros(len(lengths), mk.shape[1], columns, mk.shape[3])
            values = mv.new_zeros(len(lengths), mv.shape[1], columns, mv.shape[3])
            keys[: self.rows, :, : mk.shape[2]] = mk
            values[: self.rows, :, : mv.shape[2]] = mv
            keys[self.rows :, :, : tk.shape[2]] = tk
            values[self.rows :, :, : tv.shape[2]] = tv
            layers.append((keys, values))
        self._install(layers, lengths)

    def _install(self, layers: list[tuple[torch.Tensor, torch.Tensor]], lengths: list[int]) -> None:
        """The batch's cache over per-layer buffers whose first max(lengths) columns hold each row's
        KV left-aligned (the rest spare, for in-place appends: kv_layer.py), and its mask."""
        width = max(lengths)
        self._cache = growing_cache(self.model.config, layers, width)
        positions = torch.arange(width, device=self.device)
        self._mask = (positions[None, :] < torch.tensor(lengths, device=self.device)[:, None]).long()
        self._lengths = lengths

    def keep_rows(self, index: list[int]) -> None:
        """Drop every row not in ``index`` (kept in that order)."""
        if index == list(range(self.rows)):
            return
        if not index:
            self._cache = None
            self._mask = self._mask[:0]
            self._lengths = []
            return
        assert self._cache is not None
        select = torch.tensor(index, device=self.device)
        self._cache.batch_select_indices(select)
        self._mask = self._mask[select]
        self._lengths = [self._lengths[i] for i in index]

    @torch.inference_mode()
    def forward(self, chunks: list[list[int]], soft: list[torch.Tensor | None]) -> torch.Tensor:
        """Append one right-padded chunk per row; returns each row's last-position final hidden state
        (rows, d). ``soft[r]`` fills row r's soft-token slots, in order (None: the chunk has none)."""
        if len(chunks) != self.rows or len(soft) != self.rows:
            raise ValueError(f"{len(chunks)} chunks for {self.rows} rows")
        if min(len(c) for c in chunks) == 0:
            raise ValueError("every row appends at least one token per pass")
        width = max(len(c) for c in chunks)
        ids = torch.full((self.rows, width), self.pad_id, dtype=torch.long)
        chunk_mask = torch.zeros((self.rows, width), dtype=torch.long)
        positions = torch.zeros((self.rows, width), dtype=torch.long)
        for r, chunk in enumerate(chunks):
            n = len(chunk)
            ids[r, :n] = torch.tensor(chunk, dtype=torch.long)
            chunk_mask[r, :n] = 1
            # Pads get the positions after the row's last token; they are never attended.
            positions[r] = torch.arange(self._lengths[r], self._lengths[r] + width)
            self._lengths[r] += n
        ids, chunk_mask, positions = ids.to(self.device), chunk_mask.to(self.device), positions.to(self.device)
        embeds = fill_soft_slots(self.embed, ids, self.soft_id, self.pad_id, soft)
        self._mask = torch.cat([self._mask, chunk_mask], dim=1)
        out = self.base(
            inputs_embeds=embeds, attention_mask=self._mask, position_ids=positions, **cache_kwargs(self._cache), use_cache=True
        )
        last = chunk_mask.sum(dim=1) - 1
        return out.last_hidden_state[torch.arange(self.rows, device=self.device), last]

    def row_kv(self, row: int, start: int, end: int) -> KV:
        """Row ``row``'s KV for its real tokens [start, end) (copies, safe to keep)."""
        cols = self._mask[row].nonzero(as_tuple=True)[0][start:end]
        return [(k[row][:, cols].clone(), v[row][:, cols].clone()) for k, v in self._layers()]
