"""Keys and values of the tokens already seen, kept between decoding steps (inference only).

Without a cache every new token re-runs the whole context through the model; with one, a step runs only the
new token and attends to the stored keys and values. The tensors are allocated once for the whole context, so
a step writes into them instead of concatenating.

Rows of a batch may be left-padded to a common length: ``start[b]`` is the first slot of row ``b`` that
holds a real token. Padding slots are never attended to by real tokens, and a row's positions count from its
first real token, so every row computes what it would compute alone.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        shape = (n_layers, batch_size, n_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = capacity
        self.layers = [LayerCache(self, i) for i in range(n_layers)]
        self.reset()

    @classmethod
    def for_model(cls, model, batch_size: int, capacity: int | None = None) -> KVCache:
        cfg = model.cfg
        weight = model.out_head.weight
        return cls(
            cfg.n_layers, batch_size, cfg.kv_heads, cfg.head_dim, capacity or cfg.context_length, weight.device, weight.dtype
        )

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def reset(self, start: torch.Tensor | None = None) -> None:
        """Forget every token; ``start`` [batch] gives each row's count of left-padding slots."""
        self.length = 0
        self.start = torch.zeros(self.batch_size, dtype=torch.long, device=self.keys.device) if start is None else start
        # A Python bool, read once here, so unpadded decoding never builds a mask.
        self.padded = bool(self.start.any())
        self.mask: torch.Tensor | None = None
        self.is_causal = False

    def begin(self, n_new: int) -> torch.Tensor:
        """Prepare attention for ``n_new`` tokens appended to every row; returns their positions [batch, n_new]."""
        end = self.length + n_new
        if end > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} tokens; {end} do not fit (reset it first)")
        device = self.keys.device
        slots = torch.arange(self.length, end, device=device)
        positions = (slots.unsqueeze(0) - self.start.unsqueeze(1)).clamp_min(0)
        self.mask, self.is_causal = None, False
        if not self.padded and n_new > 1 and self.length == 0:
            self.is_causal = True
        elif self.padded or n_new > 1:
            keys = torch.arange(end, device=device)
            query, key = slots.view(1, -1, 1), keys.view(1, 1, -1)
            # A padding slot attends only to itself, which keeps its (unused) outputs finite.
            real = key >= self.start.view(-1, 1, 1)
            self.mask = ((key <= query) & real | (key == query)).unsqueeze(1)
        return positions

    def advance(self, n_new: int) -> None:
        self.length += n_new


class LayerCache:
    """One layer's view of a KVCache, handed to that layer's attention."""

    def __init__(self, cache: KVCache, index: int):
        self.cache = cache
        self.index = index

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys and values [batch, heads, n_new, head_dim]; return those of every token so far."""
        cache = self.cache
        end = cache.length + keys.shape[2]
        cache.keys[self.index, :, :, cache.length : end] = keys
        cache.values[self.index, :, :, cache.length : end] = values
        return cache.keys[self.index, :, :, :end], cache.values[self.index, :, :, :end]

    @property
    def mask(self) -> torch.Tensor | None:
        return self.cache.mask

    @property
    def is_causal(self) -> bool:
        return self.cache.is_causal
