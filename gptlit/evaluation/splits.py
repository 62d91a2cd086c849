"""The token splits of any data group, for evaluation.

Every gptlit data module (text, textfiles, and those that follow them) ends its ``setup`` by cutting its two
token sequences into ``TokenWindows`` (``set_splits``), so ``train_set.tokens`` and ``val_set.tokens`` are its
train and validation tokens, whether a tensor or a memory-mapped file. Evaluation cuts windows of its own.
"""

from __future__ import annotations

import bisect
from typing import Any, Sequence

import numpy as np

from gptlit.errors import UserError

SPLITS = ("val", "train", "all")


class Joined:
    """Two or more token sequences read as one, slice by slice, without copying them."""

    def __init__(self, *parts: Sequence[int]):
        self.parts = parts
        self.starts = [0]
        for part in parts:
            self.starts.append(self.starts[-1] + len(part))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, _ = index.indices(len(self))
        pieces = []
        i = bisect.bisect_right(self.starts, start) - 1
        while start < stop and i < len(self.parts):
            end = min(stop, self.starts[i + 1])
            pieces.append(np.asarray(self.parts[i][start - self.starts[i] : end - self.starts[i]], dtype=np.int64))
            start, i = end, i + 1
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def token_split(datamodule: Any, split: str) -> Sequence[int]:
    """The tokens of ``split`` (val, train, or all: train then val) of a data module that has been set up."""
    if split not in SPLITS:
        raise UserError(f"split={split} is not one of {', '.join(SPLITS)}")
    train, val = datamodule.train_set.tokens, datamodule.val_set.tokens
    if split == "all":
        return Joined(train, val)
    return train if split == "train" else val
