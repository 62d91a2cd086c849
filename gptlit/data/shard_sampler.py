"""Evaluation batches dealt out to the ranks of a distributed run, each batch to exactly one rank.

Lightning's own ``DistributedSampler`` pads every rank to the same length with repeated samples and deals
samples (not batches) round-robin, so a loss averaged over ranks counts some windows twice and groups them
into batches unlike a single process does. ``BatchShardSampler`` cuts the index order into the batches a
single process would see and gives batch ``k`` to rank ``k % num_replicas``: the union over ranks is the same
set of batches, nothing repeats, and ``GPTLitModule``'s sums of per-batch losses and counts across ranks equal
the single-process figures.

Every rank still runs as many evaluation batches: where the batches do not divide evenly, the ranks short of one
get a filler batch (``PaddedWindows``: a real input, every target ``IGNORE``), which the module runs forward and
does not count. Under FSDP every block's forward gathers its weights from all ranks, so a rank that stopped
early would leave the others waiting forever; and Lightning refuses a rank with no batch at all.
"""

from __future__ import annotations

import math
from typing import Iterator, Sized

import torch
from torch.utils.data import Dataset
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
        # Whole filler batches (the shape of every other batch, so a compiled model sees no new shape).
        self.filler_batches = math.ceil(n_batches / num_replicas) - len(self.batch_ids)
        self.num_samples = sum(min(batch_size, n - b * batch_size) for b in self.batch_ids)
        self.num_samples += self.filler_batches * batch_size
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
        yield from [n] * (self.filler_batches * self.batch_size)  # PaddedWindows' filler index

    def __len__(self) -> int:
        return self.num_samples


# cross_entropy's default ignore_index: a target that is not scored.
IGNORE = -100


class PaddedWindows(Dataset):
    """``windows`` and, at index ``len(windows)``, the filler window of BatchShardSampler: the first window's
    input with no target to score."""

    def __init__(self, windows: Dataset):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == len(self.windows):
            inputs, targets = self.windows[0]
            return inputs, torch.full_like(targets, IGNORE)
        return self.windows[i]
