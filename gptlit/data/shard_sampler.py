"""Evaluation batches dealt out to the ranks of a distributed run, each batch to exactly one rank.

Lightning's own ``DistributedSampler`` pads every rank to the same length with repeated samples and deals
samples (not batches) round-robin, so a loss averaged over ranks counts some windows twice and groups them
into batches unlike a single process does. ``BatchShardSampler`` cuts the index order into the batches a
single process would see and gives batch ``k`` to rank ``k % num_replicas``: the union over ranks is the same
set of batches, nothing repeats, and ``GPTLitModule``'s sums of per-batch losses and counts across ranks equal
the single-process figures. Ranks may get one batch more than others. That is safe because evaluation runs no
per-batch collective: GPTModel has no buffers, so DDP has nothing to broadcast in its forward pass (a model
with buffers needs ``broadcast_buffers=False`` in the strategy for the same guarantee).
"""

from __future__ import annotations

import math
from typing import Iterator, Sized

import torch
from torch.utils.data.distributed import DistributedSampler


class BatchShardSampler(DistributedSampler):
    # A DistributedSampler subclass, so Lightning keeps it (it only injects its own sampler into loaders
    # whose sampler is not one) and calls set_epoch on it.
    def __init__(
        self,
        dataset: Sized,
        batch_size: int,
        num_replicas: int,
        rank: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        # Here drop_last drops the partial last batch, as DataLoader's drop_last does in a single process.
        self.drop_last = drop_last
        self.batch_size = batch_size
        n = len(dataset)
        n_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
        self.batch_ids = range(rank, n_batches, num_replicas)
        self.num_samples = sum(min(batch_size, n - b * batch_size) for b in self.batch_ids)
        self.total_size = n

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            # Seeded by seed and epoch, so every rank draws the same permutation and deals disjoint batches.
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        for b in self.batch_ids:
            yield from order[b * self.batch_size : (b + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.num_samples
