"""The batched sampler: one masked argmax for every row of a decode step.

The decoder hands over each live row's last hidden state (after the final norm) and the
row's pending ``Generate`` step; the sampler returns one token id per row. Per step it does:

- rows whose step allows a short list of tokens (a choice, a copy span, a digit) are scored
  against only those rows of the LM head — one gather and one batched matrix product — so a
  49k–262k vocabulary costs them nothing; a row with exactly one allowed token is not scored;
- the other rows (free strings: a vocabulary-sized mask) get full LM-head logits and one
  batched mask, gathered from the distinct masks the steps share (the template machine hands
  out a few constant masks, cached here on the device), or scattered from long id lists;
- a retriever prior (``step.bias``) is added to the allowed tokens' logits: argmax of
  ``log_softmax(logits) + bias`` over the allowed tokens equals argmax of ``logits + bias``,
  and the latter does not depend on which other rows share the batch;
- one device→host transfer for the whole batch.

A row's path depends only on its own step, never on the batch, so batched picks equal
one-at-a-time picks. Ties go to the lowest token id, as a masked argmax over the vocabulary does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from hyfunc.cascade.template import Generate

# Allowed lists up to this long are scored sparsely (gathered LM-head rows); longer ones take
# the full-vocabulary path, where a gather of that many rows would cost more than the head.
SPARSE_MAX = 1024
# Distinct constant masks kept on the device (the machine uses a handful per vocabulary).
MASK_CACHE_SIZE = 32


class BatchSampler:
    """Greedy constrained picks for a batch of rows, with per-row product-of-experts bias."""

    def __init__(self, lm_head: nn.Module, vocab_size: int):
        self.lm_head = lm_head
        self.vocab_size = int(vocab_size)
        weight = getattr(lm_head, "weight", None)
        # Sparse scoring needs the head as a plain matrix (nn.Linear and tied embeddings are).
        self._weight = weight if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None
        bias = getattr(lm_head, "bias", None)
        self._bias = bias if isinstance(bias, torch.Tensor) else None
        # id(mask) -> (the mask, kept alive so the id stays its own; its version; its device copy)
        self._masks: OrderedDict[int, tuple[torch.Tensor, int, torch.Tensor]] = OrderedDict()

    # -- public -------------------------------------------------------------------------------

    def pick(self, hidden: torch.Tensor, steps: Sequence[Generate]) -> list[int]:
        """hidden: (rows, d) last-position final hidden states, one per row; steps: each row's
        pending Generate. Returns one token id per row."""
        if hidden.dim() != 2 or hidden.shape[0] != len(steps):
            raise ValueError(f"hidden must be (rows, d) with one row per step; got {tuple(hidden.shape)} for {len(steps)} steps")
        if not steps:
            return []
        device = hidden.device
        fixed: dict[int, int] = {}
        sparse: list[tuple[int, list[int], list[float] | None]] = []
        dense: list[tuple[int, Generate, list[int] | None, list[float] | None]] = []
        for r, step in enumerate(steps):
            allowed = step.allowed
            if isinstance(allowed, torch.Tensor):
                if step.bias is not None:
                    raise ValueError("a bias needs the allowed tokens as a list (same order)")
                dense.append((r, step, None, None))
                continue
            ids, bias = self._inside(allowed, step.bias)
            if len(ids) == 1:
                fixed[r] = ids[0]
            elif len(ids) <= SPARSE_MAX and self._weight is not None:
                sparse.append((r, ids, bias))
            else:
                dense.append((r, step, ids, bias))

        # Each path returns (its rows, its picks); one scatter and one transfer assemble them.
        rows_parts: list[int] = []
        pick_parts: list[torch.Tensor] = []
        if fixed:
            rows_parts.extend(fixed)
            pick_parts.append(torch.tensor(list(fixed.values()), dtype=torch.long, device=device))
        if sparse:
            rows_parts.extend(r for r, _, _ in sparse)
            pick_parts.append(self._pick_sparse(hidden, sparse))
        if dense:
            rows_parts.extend(r for r, _, _, _ in dense)
            pick_parts.append(self._pick_dense(hidden, dense))
        values = torch.cat(pick_parts) if len(pick_parts) > 1 else pick_parts[0]
        picks = torch.empty_like(values)
        picks[torch.tensor(rows_parts, device=device)] = values
        return picks.tolist()  # the one device -> host transfer

    # -- the two paths --------------------------------------------------------------------------

    def _pick_sparse(self, hidden: torch.Tensor, rows: list[tuple[int, list[int], list[float] | None]]) -> torch.Tensor:
        """Score only the allowed LM-head rows: each allowed id's head row times its row's hidden
        state (no padding is gathered), then one masked argmax over a (R, longest) score grid."""
        assert self._weight is not None
        device = hidden.device
        width = max(len(ids) for _, ids, _ in rows)
        flat_ids: list[int] = []
        flat_rows: list[int] = []
        flat_cols: list[int] = []
        flat_prior: list[float] = []
        any_bias = False
        for i, (_, ids, bias) in enumerate(rows):
            flat_ids.extend(ids)
            flat_rows.extend([i] * len(ids))
            flat_cols.extend(range(len(ids)))
            if bias is not None:
                any_bias = True
                flat_prior.extend(bias)
            else:
                flat_prior.extend([0.0] * len(ids))
        ids_t, rows_t, cols_t = torch.tensor([flat_ids, flat_rows, flat_cols], dtype=torch.long, device=device)
        h = hidden[torch.tensor([r for r, _, _ in rows], device=device)]
        # (N, d): only the allowed rows of the head. Products and sums in float32, as a matmul
        # accumulates them, even when the model runs in bfloat16.
        weights = self._weight[ids_t].float()
        scores = (weights * h[rows_t].float()).sum(dim=-1)
        if self._bias is not None:
            scores = scores + self._bias[ids_t].float()
        if any_bias:
            scores = scores + torch.tensor(flat_prior, dtype=torch.float32, device=device)
        grid = torch.full((len(rows), width), float("-inf"), device=device)
        grid[rows_t, cols_t] = scores
        ids_grid = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        ids_grid[rows_t, cols_t] = ids_t
        return ids_grid.gather(1, grid.argmax(dim=-1, keepdim=True)).squeeze(1)

    def _pick_dense(
        self, hidden: torch.Tensor, rows: list[tuple[int, Generate, list[int] | None, list[float] | None]]
    ) -> torch.Tensor:
        """Full LM-head logits for these rows, one batched (R, V) mask, one masked argmax."""
        device = hidden.device
        row_index = torch.tensor([r for r, _, _, _ in rows], device=device)
        logits = self.lm_head(hidden[row_index]).float()[:, : self.vocab_size]
        vocab = logits.shape[1]
        # Distinct constant masks stacked once, then one gather picks each row's mask.
        table: list[torch.Tensor] = []
        slot_of: dict[int, int] = {}
        which: list[int] = []
        lists: list[tuple[int, list[int], list[float] | None]] = []
        for i, (_, step, ids, bias) in enumerate(rows):
            if ids is not None:
                lists.append((i, ids, bias))
                which.append(-1)
                continue
            assert isinstance(step.allowed, torch.Tensor)
            key = id(step.allowed)
            if key not in slot_of:
                slot_of[key] = len(table)
                table.append(self._device_mask(step.allowed, vocab, device))
            which.append(slot_of[key])
        mask = torch.zeros(len(rows), vocab, dtype=torch.bool, device=device)
        extra = torch.zeros(len(rows), vocab, dtype=torch.float32, device=device)
        if table:
            tensor_rows = [i for i, w in enumerate(which) if w >= 0]
            stacked = torch.stack(table)
            mask[torch.tensor(tensor_rows, device=device)] = stacked[torch.tensor([which[i] for i in tensor_rows], device=device)]
        if lists:
            r_idx = torch.tensor([i for i, ids, _ in lists for _ in ids], device=device)
            t_idx = torch.tensor([t for _, ids, _ in lists for t in ids], device=device)
            mask[r_idx, t_idx] = True
            biased = [(i, ids, b) for i, ids, b in lists if b is not None]
            if biased:
                br = torch.tensor([i for i, ids, _ in biased for _ in ids], device=device)
                bt = torch.tensor([t for _, ids, _ in biased for t in ids], device=device)
                bv = torch.tensor([v for _, _, b in biased for v in b], dtype=torch.float32, device=device)
                extra[br, bt] = bv
        scores = (logits + extra).masked_fill(~mask, float("-inf"))
        return scores.argmax(dim=-1)

    # -- helpers --------------------------------------------------------------------------------

    def _inside(self, allowed: list[int], bias: list[float] | None) -> tuple[list[int], list[float] | None]:
        """The allowed ids the LM head can score, ascending (so ties go to the lowest id), with
        their bias in the same order."""
        vocab = self.vocab_size
        if bias is None:
            ids = sorted(t for t in allowed if 0 <= t < vocab)
            if not ids:
                raise RuntimeError("no allowed token lies inside the LMS vocabulary")
            return ids, None
        if len(bias) != len(allowed):
            raise ValueError("a step's bias needs one value per allowed token")
        pairs = sorted((t, b) for t, b in zip(allowed, bias, strict=True) if 0 <= t < vocab)
        if not pairs:
            raise RuntimeError("no allowed token lies inside the LMS vocabulary")
        return [t for t, _ in pairs], [b for _, b in pairs]

    def _device_mask(self, mask: torch.Tensor, vocab: int, device: torch.device) -> torch.Tensor:
        """A constant vocabulary mask on the device, cut or padded to ``vocab`` entries."""
        # An in-place edit bumps a tensor's version, so a cached copy of an edited mask is never
        # reused; inference tensors track no version and are copied every time.
        version = None if mask.is_inference() else mask._version
        key = id(mask)
        hit = self._masks.get(key)
        if (
            version is not None
            and hit is not None
            and hit[0] is mask
            and hit[1] == version
            and hit[2].shape[0] == vocab
            and hit[2].device == device
        ):
            self._masks.move_to_end(key)
            return hit[2]
        on_device = torch.zeros(vocab, dtype=torch.bool, device=device)
        n = min(vocab, mask.numel())
        on_device[:n] = mask[:n].to(device)
        if version is not None:
            self._masks[key] = (mask, version, on_device)
            while len(self._masks) > MASK_CACHE_SIZE:
                self._masks.popitem(last=False)
        return on_device
