"""A KV cache of independent slots, one per request being decoded, for continuous batching.

gptlit.core.kv_cache keeps one length for the whole batch: every row starts together and advances together.
A server's requests arrive and leave at any step, so here each slot keeps its own length. GPTModel stays as
it is: it talks to a cache through ``begin``/``layers``/``advance`` and each layer's ``update``/``mask``/
``is_causal``, and the two passes below speak that protocol.

- A prefill pass runs one request's prompt alone, into its slot, exactly as ``KVCache`` with a batch of one
  runs it (same shapes, same strides, the causal flag instead of a mask), so a request's first token is the one
  generate.py picks.
- A padded prefill pass runs several prompts that arrived together in one batch, left-padded like KVCache's
  rows, then moves each slot's keys and values over its padding, so the slot looks as a lone prefill leaves it.
- A decode pass runs one new token for each of the first ``n`` slots. Active requests are kept in slots
  0..n-1 (the engine moves the last one into a hole), so the pass reads a view of the cache, never a copy.
  Each row writes its key and value at its own position and attends, through a mask, to its own tokens only.
  With one row the pass is KVCache's decoding step, mask-free.

The storage is allocated with ``torch.empty``, so the pages of slots no request has used are not touched
and not resident; a slot's positions are zeroed once, the first time a decode pass's mask covers them, since
a masked key still meets a value in the attention product and an uninitialised NaN there would spread.
"""

from __future__ import annotations

import torch


class SlotCache:
    def __init__(self, model, n_slots: int):
        """``n_slots`` slots of ``model``'s whole context each, on its device and in its dtype."""
        cfg, weight = model.cfg, model.out_head.weight
        shape = (cfg.n_layers, n_slots, cfg.kv_heads, cfg.context_length, cfg.head_dim)
        self.keys = torch.empty(shape, device=weight.device, dtype=weight.dtype)
        self.values = torch.empty(shape, device=weight.device, dtype=weight.dtype)
        self.capacity = cfg.context_length
        self.n_layers = cfg.n_layers
        # Tokens held by each slot, and how far each slot's storage is known to hold finite numbers.
        self.lengths = [0] * n_slots
        self.finite = [0] * n_slots

    @property
    def n_slots(self) -> int:
        return self.keys.shape[1]

    def prefill(self, slot: int) -> _PrefillPass:
        """The pass that writes a prompt into ``slot`` (emptied first)."""
        self.lengths[slot] = 0
        return _PrefillPass(self, slot)

    def prefill_padded(self, first: int, starts: list[int]) -> _PaddedPrefillPass:
        """The pass that writes several prompts at once into slots ``first``, ``first + 1``, ...: row ``b`` of
        its input is left-padded by ``starts[b]`` tokens, as gptlit.core.kv_cache pads a batch."""
        for slot in range(first, first + len(starts)):
            self.lengths[slot] = 0
        return _PaddedPrefillPass(self, first, starts)

    def decode(self, n_rows: int) -> _DecodePass:
        """The pass that appends one token to each of slots 0..n_rows-1."""
        return _DecodePass(self, n_rows)

    def move(self, source: int, target: int) -> None:
        """Copy slot ``source``'s tokens into slot ``target`` (the engine fills a hole with the last slot)."""
        n = self.lengths[source]
        self.keys[:, target, :, :n] = self.keys[:, source, :, :n]
        self.values[:, target, :, :n] = self.values[:, source, :, :n]
        self.lengths[target] = n
        self.finite[target] = max(self.finite[target], n)
        self.lengths[source] = 0

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0

    def _make_finite(self, slot: int, end: int) -> None:
        if self.finite[slot] < end:
            self.keys[:, slot, :, self.finite[slot] : end] = 0
            self.values[:, slot, :, self.finite[slot] : end] = 0
            self.finite[slot] = end


class _Layer:
    """One layer's view of a pass, as a model's attention reads it: ``update`` writes the layer's new keys and
    values and returns all it attends to; the mask and causal flag are the pass's, the same in every layer."""

    def __init__(self, owner, index: int):
        self.owner = owner
        self.index = index

    @property
    def mask(self):
        return self.owner.mask

    @property
    def is_causal(self) -> bool:
        return self.owner.is_causal


class _PrefillPass:
    def __init__(self, cache: SlotCache, slot: int):
        self.cache = cache
        self.slot = slot
        self.n_new = 0
        self.layers = [_PrefillLayer(self, i) for i in range(cache.n_layers)]
        self.mask = None
        self.is_causal = False

    def begin(self, n_new: int) -> torch.Tensor:
        if n_new > self.cache.capacity:
            raise ValueError(f"a prompt of {n_new} tokens does not fit a slot of {self.cache.capacity}")
        self.n_new = n_new
        # KVCache's first step: causal attention over the prompt, no mask (one token needs none).
        self.is_causal = n_new > 1
        return torch.arange(n_new, device=self.cache.keys.device).unsqueeze(0)

    def advance(self, n_new: int) -> None:
        cache = self.cache
        cache.lengths[self.slot] = n_new
        cache.finite[self.slot] = max(cache.finite[self.slot], n_new)


class _PrefillLayer(_Layer):

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache, slot, n = self.owner.cache, self.owner.slot, keys.shape[2]
        cache.keys[self.index, slot : slot + 1, :, :n] = keys
        cache.values[self.index, slot : slot + 1, :, :n] = values
        return cache.keys[self.index, slot : slot + 1, :, :n], cache.values[self.index, slot : slot + 1, :, :n]


class _PaddedPrefillPass:
    """Prompts arriving together run as one batch: one pass of matrix products with as many rows as all their
    tokens, instead of one pass each (which, on a CPU, multiplies by few rows at a time and wastes most of each
    product's reading of the weights). Rows are left-padded so the last position is every prompt's last token,
    the one whose logits pick the first new token. Positions count from each row's first real token and padding
    is masked out of real tokens' attention, as in KVCache. Once every layer has written, each slot's keys and
    values are moved left over the padding, so the slot holds its prompt from position 0, as a lone prefill
    leaves it."""

    def __init__(self, cache: SlotCache, first: int, starts: list[int]):
        self.cache = cache
        self.first = first
        self.starts = starts
        self.layers = [_PaddedPrefillLayer(self, i) for i in range(cache.n_layers)]
        self.mask = None
        self.is_causal = False
        self.width = 0

    def begin(self, n_new: int) -> torch.Tensor:
        if n_new > self.cache.capacity:
            raise ValueError(f"a prompt of {n_new} tokens does not fit a slot of {self.cache.capacity}")
        device = self.cache.keys.device
        self.width = n_new
        start = torch.tensor(self.starts, dtype=torch.long, device=device).view(-1, 1)
        slots = torch.arange(n_new, device=device)
        query, key = slots.view(1, -1, 1), slots.view(1, 1, -1)
        # A padding position attends only to itself, which keeps its (unused) output finite.
        real = key >= start.view(-1, 1, 1)
        self.mask = ((key <= query) & real | (key == query)).unsqueeze(1)
        return (slots.unsqueeze(0) - start).clamp_min(0)

    def advance(self, n_new: int) -> None:
        cache = self.cache
        for row, start in enumerate(self.starts):
            slot = self.first + row
            if start:
                # clone: source and target overlap
                cache.keys[:, slot, :, : n_new - start] = cache.keys[:, slot, :, start:n_new].clone()
                cache.values[:, slot, :, : n_new - start] = cache.values[:, slot, :, start:n_new].clone()
            cache.lengths[slot] = n_new - start
            cache.finite[slot] = max(cache.finite[slot], n_new)


class _PaddedPrefillLayer(_Layer):

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        owner, cache = self.owner, self.owner.cache
        rows = slice(owner.first, owner.first + keys.shape[0])
        n = keys.shape[2]
        cache.keys[self.index, rows, :, :n] = keys
        cache.values[self.index, rows, :, :n] = values
        return cache.keys[self.index, rows, :, :n], cache.values[self.index, rows, :, :n]


class _DecodePass:
    def __init__(self, cache: SlotCache, n_rows: int):
        self.cache = cache
        self.n_rows = n_rows
        device = cache.keys.device
        lengths = cache.lengths[:n_rows]
        if max(lengths) >= cache.capacity:
            raise ValueError(f"a slot is full ({cache.capacity} tokens)")
        self.end = max(lengths) + 1
        self.positions = torch.tensor(lengths, dtype=torch.long, device=device)
        self.rows = torch.arange(n_rows, device=device)
        self.mask = None
        if n_rows > 1:
            for slot in range(n_rows):
                cache._make_finite(slot, self.end)
            # Row b's new token sits at position lengths[b] and sees positions 0..lengths[b]; later positions
            # belong to nobody in this row (or to an older request), so they are masked out.
            keys = torch.arange(self.end, device=device)
            self.mask = (keys.unsqueeze(0) <= self.positions.unsqueeze(1)).view(n_rows, 1, 1, self.end)
        self.layers = [_DecodeLayer(self, i) for i in range(cache.n_layers)]
        self.is_causal = False

    def begin(self, n_new: int) -> torch.Tensor:
        if n_new != 1:
            raise ValueError("a decode pass takes one token per row")
        return self.positions.unsqueeze(1)

    def advance(self, n_new: int) -> None:
        for slot in range(self.n_rows):
            self.cache.lengths[slot] += 1


class _DecodeLayer(_Layer):

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        owner, cache, i = self.owner, self.owner.cache, self.index
        n = owner.n_rows
        if n == 1:
            # KVCache's own writes and view for one row, so a lone request computes what generate.py does.
            at = cache.lengths[0]
            cache.keys[i, 0:1, :, at : at + 1] = keys
            cache.values[i, 0:1, :, at : at + 1] = values
        else:
            # keys [n, heads, 1, head_dim] go to (row, :, position of that row).
            cache.keys[i][owner.rows, :, owner.positions] = keys[:, :, 0]
            cache.values[i][owner.rows, :, owner.positions] = values[:, :, 0]
        return cache.keys[i, :n, :, : owner.end], cache.values[i, :n, :, : owner.end]
