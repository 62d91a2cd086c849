"""The book's data pipeline (section 2.6 / 5.1.3) as a LightningDataModule.

A UTF-8 text is split by characters into train and validation parts, each part is tokenized, and windows of
``context_length`` tokens are cut every ``stride`` tokens, the targets shifted by one token.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from gptlit.errors import UserError, check_int
from gptlit.files import fetch
from gptlit.data.shard_sampler import BatchShardSampler, PaddedWindows
from gptlit.core.tokenizer import Tokenizer, load_tokenizer

VERDICT_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt"
)
# A text file is handed to a tokenizer's training in pieces of about this many characters, cut at line ends.
DOCUMENT_BYTES = 1 << 16
# The one path that is ever downloaded to: The Verdict's default place. Any other missing path is a mistake.
DEFAULT_PATH = "data/the-verdict.txt"


class TokenWindows(Dataset):
    """Input/target windows over one token sequence, sliced on demand rather than copied.

    ``tokens`` is a 1-D tensor or anything sliced like a numpy array (gptlit.data.textfiles.TokenFile reads a
    memory-mapped uint16 file), so only the window being read is ever in memory.
    """

    def __init__(self, tokens: torch.Tensor | np.ndarray, context_length: int, stride: int):
        self.tokens = tokens
        self.context_length = context_length
        self.stride = stride
        # The book's range(0, len(tokens) - context_length, stride): every window has a full shifted target.
        self.n = len(range(0, len(tokens) - context_length, stride))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        start = i * self.stride
        chunk = self.tokens[start : start + self.context_length + 1]
        if not isinstance(chunk, torch.Tensor):
            # uint16 storage has no index type of its own; embeddings and the loss want int64.
            chunk = torch.from_numpy(chunk.astype(np.int64))
        return chunk[:-1], chunk[1:]


class ResumableRandomSampler(Sampler[int]):
    """torch's RandomSampler order, random draws included (the book's shuffle: see gptlit/book/schedule.py), that can
    continue an epoch mid-way.

    Each epoch draws its seed from the global generator exactly as RandomSampler does, so a seeded run shuffles
    as the book's DataLoader(shuffle=True) does; that seed and the position are all a checkpoint needs.
    """

    def __init__(self, n: int, limit: int | None = None):
        """``limit``: only the first ``limit`` indices of each epoch's order (the epoch's whole steps)."""
        self.n = n
        self.limit = n if limit is None else limit
        self.seed: int | None = None
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.limit

    def resume(self, seed: int, start: int) -> None:
        """Make the next epoch the one shuffled with ``seed``, continuing at position ``start``."""
        self._resume = (seed, start)

    def __iter__(self) -> Iterator[int]:
        if self._resume is not None:
            (seed, start), self._resume = self._resume, None
        else:
            seed, start = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        self.seed = seed
        generator = torch.Generator()
        generator.manual_seed(seed)
        yield from torch.randperm(self.n, generator=generator).tolist()[start : self.limit]


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler whose next epoch can start mid-way. Its order is fixed by the seed and the epoch, so a
    checkpoint needs only those and the position in this rank's share.

    The epoch is the sampler's own: Lightning's count, which it passes to ``set_epoch``, runs one ahead after a
    resume from a run that ``max_steps`` stopped mid-epoch, so a resumed sampler keeps the offset to it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._start = 0
        self._resume_epoch: int | None = None
        self._offset = 0

    def resume(self, epoch: int, start: int) -> None:
        """Make the next epoch ``epoch``'s order, skipping the first ``start`` indices of this rank's share."""
        self._resume_epoch, self._start = epoch, start

    def set_epoch(self, epoch: int) -> None:
        if self._resume_epoch is not None:
            self._offset, self._resume_epoch = self._resume_epoch - epoch, None
        super().set_epoch(epoch + self._offset)

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0
        return itertools.islice(super().__iter__(), start, None)


def text_pieces(paths: list[Path], start: int, stop: int, encoding_errors: str = "strict") -> Iterator[str]:
    """The text of the files ``paths`` taken as one stream, from byte ``start`` to about byte ``stop`` (the line
    that crosses either bound goes with the part before it), in pieces of about DOCUMENT_BYTES cut at line ends."""
    position = 0
    piece: list[str] = []
    size = 0
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors=encoding_errors) as f:
                for line in f:
                    position += len(line.encode("utf-8"))
                    if position <= start:
                        continue
                    piece.append(line)
                    size += len(line)
                    if size >= DOCUMENT_BYTES or position >= stop:
                        yield "".join(piece)
                        piece, size = [], 0
                    if position >= stop:
                        return
        except UnicodeDecodeError as err:
            raise UserError(f"{path} is not valid UTF-8 ({err.reason}); convert it to UTF-8 or set "
                            "data.encoding_errors=replace to replace the bad bytes") from None
    if piece:
        yield "".join(piece)


def download(url: str, path: Path) -> None:
    """Fetch ``url`` into ``path``; a failed download leaves nothing behind."""
    fetch(url, path, fix="put a UTF-8 text file there or set data.path=/path/to/text.txt")


class TextDataModule(L.LightningDataModule):
    def __init__(
        self,
        path: str = DEFAULT_PATH,
        context_length: int = 256,
        stride: int | None = None,
        batch_size: int = 2,
        train_ratio: float = 0.9,
        num_workers: int = 0,
        shuffle: bool = True,
        url: str | None = VERDICT_URL,
        encoding_errors: str = "strict",
        tokenizer: str | None = None,
    ):
        """``tokenizer`` is ``tokenizer.path``: a trained tokenizer.json (or a folder holding one); None for GPT-2's
        BPE (gptlit.core.tokenizer)."""
        super().__init__()
        check_int("data.context_length", context_length)
        check_int("data.batch_size", batch_size)
        stride = context_length if stride is None else stride
        check_int("data.stride", stride, what="a positive integer or null (= context_length)")
        if not 0.0 < train_ratio < 1.0:
            raise UserError(f"data.train_ratio must be strictly between 0 and 1, got {train_ratio!r}")
        check_int("data.num_workers", num_workers, minimum=0, what="a non-negative integer")
        self.path = Path(path)
        self.url = url
        self.context_length = context_length
        self.stride = stride
        self.batch_size = batch_size
        self.train_ratio = train_ratio
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.encoding_errors = encoding_errors
        self.tokenizer_path = tokenizer
        self.train_set: TokenWindows | None = None
        self.val_set: TokenWindows | None = None
        self.train_sampler: ResumableRandomSampler | ResumableDistributedSampler | None = None
        self._resume_at: tuple[int, int] | None = None  # a distributed run's (epoch, position), for its loader

    def prepare_data(self) -> None:
        # A mistyped data.path must not become a fresh copy of The Verdict that the run then trains on: only the
        # default corpus at its default path is fetched; read_text reports any other missing path.
        if self.url and not self.path.exists() and self.path.resolve() == Path(DEFAULT_PATH).resolve():
            download(self.url, self.path)

    def read_text(self) -> str:
        if not self.path.exists():
            raise UserError(f"data.path {self.path} does not exist; point data.path at a UTF-8 text file")
        if not self.path.is_file():
            raise UserError(f"data.path {self.path} is not a file; point data.path at a UTF-8 text file")
        try:
            text = self.path.read_text(encoding="utf-8", errors=self.encoding_errors)
        except UnicodeDecodeError as err:
            raise UserError(
                f"data.path {self.path} is not valid UTF-8 at byte {err.start}; convert it to UTF-8 or set "
                "data.encoding_errors=replace to replace the bad bytes"
            ) from None
        if not text:
            raise UserError(f"data.path {self.path} is empty; point data.path at a UTF-8 text file")
        return text

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        text = self.read_text()
        split = int(self.train_ratio * len(text))
        encode = self.tokenizer.encode
        self.set_splits(
            torch.tensor(encode(text[:split]), dtype=torch.long), torch.tensor(encode(text[split:]), dtype=torch.long)
        )

    @property
    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.tokenizer_path)

    def text_files(self) -> list[Path]:
        if not self.path.is_file():
            self.read_text()  # its one-line error for a missing or wrong path
        return [self.path]

    def documents(self, split: str = "train") -> Iterator[str]:
        """The text of a split, a piece of about DOCUMENT_BYTES at a time (never all in memory), for training a
        tokenizer: "train" the first ``train_ratio`` of the corpus's bytes, "val" the rest, as setup splits it."""
        files = self.text_files()
        cut = int(self.train_ratio * sum(f.stat().st_size for f in files))
        start, stop = (0, cut) if split == "train" else (cut, float("inf"))
        yield from text_pieces(files, start, stop, self.encoding_errors)

    def set_splits(self, train_tokens: torch.Tensor | np.ndarray, val_tokens: torch.Tensor | np.ndarray) -> None:
        """Cut both token splits into windows, refusing splits too short for one window or one batch."""
        parts = {}
        for name, tokens in (("train", train_tokens), ("val", val_tokens)):
            windows = TokenWindows(tokens, self.context_length, self.stride)
            if len(windows) == 0:
                raise UserError(
                    f"the {name} split of {self.path} has {len(tokens)} tokens but one window needs "
                    f"{self.context_length + 1}; use a longer text or a smaller data.context_length"
                )
            parts[name] = windows
        if len(parts["train"]) < self.batch_size:
            raise UserError(
                f"the train split of {self.path} gives {len(parts['train'])} windows, fewer than one batch of "
                f"data.batch_size={self.batch_size}; lower data.batch_size or data.stride"
            )
        self.train_set, self.val_set = parts["train"], parts["val"]

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _distributed(self) -> bool:
        return self._world_size() > 1

    def _whole_steps(self, windows: int) -> int:
        """The windows of one rank's epoch that fill whole optimizer steps. With gradient accumulation over k
        batches, Lightning would step once more on the epoch's last batches, fewer than k, with their gradient
        still divided by k; dropping them keeps every step the same size, as drop_last does for batches."""
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        per_step = self.batch_size * accumulate
        return windows // per_step * per_step

    def _loader(
        self,
        dataset: Dataset,
        shuffle: bool,
        drop_last: bool,
        evaluation: bool = False,
        sampler: Sampler | None = None,
    ) -> DataLoader:
        if self._distributed():
            # Our own DistributedSampler, so Lightning injects none: its sampler would shuffle the training
            # set even with data.shuffle=false, and pad evaluation with repeated windows. Lightning calls
            # set_epoch on either, so shuffled orders change every epoch.
            trainer = self.trainer
            ranks = {"num_replicas": trainer.world_size, "rank": trainer.global_rank}
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
            if evaluation:
                sampler = BatchShardSampler(
                    dataset, self.batch_size, **ranks, shuffle=shuffle, seed=seed, drop_last=drop_last
                )
                dataset = PaddedWindows(dataset)
            else:
                # drop_last trims the tail so that every rank gets as many windows, none repeated; each rank's
                # share is then cut to whole steps, dropping the last windows of the common order.
                sampler = ResumableDistributedSampler(
                    dataset, **ranks, shuffle=shuffle, seed=seed, drop_last=drop_last
                )
                sampler.num_samples = self._whole_steps(sampler.num_samples)
                sampler.total_size = sampler.num_samples * sampler.num_replicas
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle if sampler is None else None,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self._distributed():
            loader = self._loader(self.train_set, shuffle=self.shuffle, drop_last=True)
            self.train_sampler = loader.sampler
            if self._resume_at is not None:
                self.train_sampler.resume(*self._resume_at)
                self._resume_at = None
            return loader
        limit = self._whole_steps(len(self.train_set))
        if self.shuffle:
            if self.train_sampler is None:
                self.train_sampler = ResumableRandomSampler(len(self.train_set), limit)
            self.train_sampler.limit = limit
            return self._loader(self.train_set, shuffle=True, drop_last=True, sampler=self.train_sampler)
        return self._loader(self.train_set, shuffle=False, drop_last=True, sampler=range(limit))

    def state_dict(self) -> dict[str, Any]:
        """Where the training epoch stands, so a run interrupted mid-epoch resumes in the same order."""
        sampler = self.train_sampler
        if sampler is None or self.trainer is None:
            return {}
        # "processed": during on_train_batch_end, where checkpoints are taken mid-epoch, "completed" lags by one.
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if not 0 < done < self.trainer.num_training_batches:
            return {}  # at an epoch boundary the next epoch draws a fresh order, as it would have anyway
        if isinstance(sampler, ResumableDistributedSampler):
            # Each rank has done as many batches; the order follows from the seed and epoch a resume restores.
            return {"train_order_epoch": sampler.epoch, "train_samples_done_per_rank": done * self.batch_size,
                    "world_size": self.trainer.world_size}
        if sampler.seed is None:
            return {}
        return {"train_order_seed": sampler.seed, "train_samples_done": done * self.batch_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_order_seed" in state_dict and not self._distributed():
            self.setup("fit")
            self.train_sampler = ResumableRandomSampler(len(self.train_set), self._whole_steps(len(self.train_set)))
            self.train_sampler.resume(state_dict["train_order_seed"], state_dict["train_samples_done"])
        elif "train_samples_done_per_rank" in state_dict and state_dict["world_size"] == self._world_size():
            self._resume_at = (state_dict["train_order_epoch"], state_dict["train_samples_done_per_rank"])
        # Otherwise the run was cut mid-epoch with another number of processes: its order cannot be continued,
        # and the epoch restarts in the new order (Lightning warns that a mid-epoch resume may repeat batches).

    def val_dataloader(self) -> list[DataLoader]:
        # Evaluation estimates the training loss too, in eval mode over the (shuffled) train loader as the book's
        # evaluate_model does, and before the val loader, so the random draws of the shuffle are the book's.
        # Book-only order that cannot move into gptlit/book/schedule.py, which relies on it.
        return [
            self._loader(self.train_set, shuffle=self.shuffle, drop_last=True, evaluation=True),
            self._loader(self.val_set, shuffle=False, drop_last=False, evaluation=True),
        ]
