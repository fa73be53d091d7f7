"""A KV-cache layer that appends in place: a transformers ``DynamicLayer`` with spare capacity.

``DynamicLayer.update`` concatenates, so every pass copies the layer's whole cache to append one
chunk: per decode pass, rows x kv_heads x length x head_dim x 2 per layer. With SmolLM2-135M (30
layers) and 32 rows of ~370 columns that is ~270 MB copied per pass, as much as reading the bf16
weights, and it grows with the batch's life. Here the keys and values live in a buffer with spare
columns (grown by doubling, so appends cost amortised O(chunk)); ``keys``/``values`` are views of
its filled part, which is what attention reads, exactly as before.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def capacity(length: int, spare: int = 64) -> int:
    """Columns to allocate for ``length`` filled ones: room to append before the next regrowth."""
    return length + max(spare, length // 2)


class GrowingLayer(DynamicLayer):
    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None, length: int | None = None,
                 spare: int = 64):
        """``keys``/``values``: (rows, heads, columns, dim) buffers whose first ``length`` columns
        (default: all) are filled; they are used as they are when they have spare columns, else
        copied into ones that do."""
        super().__init__()
        self.spare = spare
        self._length = 0
        if keys is not None and values is not None:
            self._adopt(keys, values, keys.shape[2] if length is None else length)

    def _adopt(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        if keys.shape[2] <= length:  # no room to append: copy into a buffer with spare columns
            rows, heads, _, dim = keys.shape
            columns = capacity(length, self.spare)
            grown_keys = keys.new_empty(rows, heads, columns, dim)
            grown_values = values.new_empty(rows, values.shape[1], columns, values.shape[3])
            grown_keys[:, :, :length] = keys[:, :, :length]
            grown_values[:, :, :length] = values[:, :, :length]
            keys, values = grown_keys, grown_values
        self._keys, self._values = keys, values
        self._length = length
        self.device = keys.device
        self.is_initialized = True
        self._expose()

    def _expose(self) -> None:
        self.keys = self._keys[:, :, : self._length]
        self.values = self._values[:, :, : self._length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self._adopt(key_states[:, :, :0], value_states[:, :, :0], 0)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        add = key_states.shape[-2]
        end = self._length + add
        if end > self._keys.shape[2]:
            columns = max(end + self.spare, 2 * self._keys.shape[2])
            keys = self._keys.new_empty(*self._keys.shape[:2], columns, self._keys.shape[3])
            values = self._values.new_empty(*self._values.shape[:2], columns, self._values.shape[3])
            keys[:, :, : self._length] = self.keys
            values[:, :, : self._length] = self.values
            self._keys, self._values = keys, values
        self._keys[:, :, self._length : end] = key_states
        self._values[:, :, self._length : end] = value_states
        self._length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._length if self.is_initialized else 0

    def reset(self) -> None:
        self._length = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove and self.is_initialized:
            self._length = max(0, self._length + tokens_to_remove)
            self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._keys = self._keys.repeat_interleave(repeats, dim=0)
            self._values = self._values.repeat_interleave(repeats, dim=0)
            self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._keys = self._keys[indices]
            self._values = self._values[indices]
            self._expose()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)


def growing_cache(config, layers: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> DynamicCache:
    """A DynamicCache over per-layer (keys, values) buffers whose first ``length`` columns are
    filled: plain full-attention layers become GrowingLayers over the buffers themselves (no
    copy); sliding-window and other special layers take the filled part by their own logic."""
    cache = DynamicCache(config=config)
    if len(cache.layers) != len(layers):
        raise ValueError(f"{len(layers)} KV layers for a model with {len(cache.layers)} cache layers")
    for i, (keys, values) in enumerate(layers):
        if type(cache.layers[i]) is DynamicLayer:
            cache.layers[i] = GrowingLayer(keys, values, length)
        else:
            cache.layers[i].update(keys[:, :, :length], values[:, :, :length])
    return cache
