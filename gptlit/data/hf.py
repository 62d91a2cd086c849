"""Any Hugging Face ``datasets`` dataset as a corpus: TextDataModule's windows over the shared token cache.

``path`` is what ``datasets.load_dataset`` takes: a hub name (``roneneldan/TinyStories``, with ``name`` its
config), a local folder, or a file or glob of parquet, json/jsonl, csv, arrow or text files. Each split is
tokenized once, in worker processes, into the same uint16 token file that ``data=textfiles`` writes
(gptlit.data.token_cache.write_token_file: documents in dataset order, ``<|endoftext|>`` between them). Its name
is a digest of the data: the bytes of local files, the hub's revision of a hub dataset. Rows are read a batch at
a time and only a few batches are ever in flight, so memory stays flat whatever the dataset's size; local files
are read in place (no Arrow copy), and ``streaming=True`` reads a hub dataset as it downloads without storing it.

Validation is the dataset's own ``val_split`` when it has one; otherwise the last ``val_size`` of the training
tokens (a fraction, or a number of tokens) are held out. Windows never cross the split point, so no token of
the validation set is ever a training input or target.
"""

from __future__ import annotations

import functools
import glob
import itertools
import os
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from gptlit.data.text import TextDataModule
from gptlit.data.token_cache import (
    TokenFile, cache_key, encode_documents, file_digest, storable, verified, worker_context, write_token_file,
)
from gptlit import hub
from gptlit.errors import UserError

# The file formats datasets reads, by suffix, and the builder that reads them.
BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow",
            ".txt": "text"}
ROWS_PER_TASK = 256


def ordered_map(pool: Any, fn: Callable, items: Iterable, window: int) -> Iterator:
    """``fn`` over ``items`` in worker processes, results in input order, at most ``window`` tasks in flight:
    Pool.imap would read the whole input ahead into memory."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


class Source:
    """Where the data of ``path`` comes from: local files (a folder, a file, a glob) or the hub."""

    def __init__(self, path: str, name: str | None):
        self.path, self.name = path, name
        local = Path(path).expanduser()
        self.folder = local if local.is_dir() else None
        if self.folder is not None:
            self.files = sorted(f for f in self.folder.rglob("*") if f.suffix in BUILDERS and f.is_file())
        elif local.is_file():
            self.files = [local]
        else:
            self.files = sorted(Path(f) for f in glob.glob(str(local), recursive=True) if Path(f).is_file())
        if not self.files and self.folder is None and looks_local(path):
            raise UserError(
                f"data.path {path} matches no files; point it at a folder, a file or a glob of "
                f"{', '.join(sorted(BUILDERS))} files, or at a Hugging Face hub dataset name"
            )
        if self.folder is not None and not self.files:
            raise UserError(f"data.path {path} holds no {', '.join(sorted(BUILDERS))} files")
        self.local = bool(self.files)
        builders = {BUILDERS.get(f.suffix) for f in self.files}
        if self.local and self.folder is None and (None in builders or len(builders) > 1):
            raise UserError(
                f"data.path {path} matches files of several formats or an unknown one "
                f"({', '.join(sorted({f.suffix for f in self.files}))}); point it at files of one of: "
                f"{', '.join(sorted(BUILDERS))}"
            )
        # Plain text is one row per line unless asked otherwise; a document is the whole file.
        self.options = {"sample_by": "document"} if any(f.suffix == ".txt" for f in self.files) else {}

    def load(self, split: str | None = None, streaming: bool = False):
        import datasets

        options = dict(self.options)
        if self.files and all(f.suffix == ".parquet" for f in self.files):
            import pyarrow.dataset

            # pyarrow's pre-buffering keeps what it has read of a parquet file until the file is closed: the
            # reader's memory grew with the file (985 MB for 374 MB of text), and stays flat without it.
            options["fragment_scan_options"] = pyarrow.dataset.ParquetFragmentScanOptions(pre_buffer=False)
        with hub_errors(self.path):
            if self.folder is not None:
                return datasets.load_dataset(str(self.folder), split=split, streaming=True, **options)
            if self.local:
                builder = BUILDERS[self.files[0].suffix]
                files = [str(f) for f in self.files]
                return datasets.load_dataset(builder, data_files=files, split=split, streaming=True, **options)
            return datasets.load_dataset(self.path, self.name, split=split, streaming=streaming)

    def split_names(self) -> list[str]:
        if self.folder is not None:
            return list(self.load())  # datasets finds the splits by file name (train-*, validation-*, ...)
        if self.local:
            return ["train"]
        import datasets

        with hub_errors(self.path):
            return datasets.get_dataset_split_names(self.path, self.name)

    def identity(self) -> list[str]:
        """What names the data: every local file's bytes and place, or the hub dataset's revision."""
        if self.local:
            root = self.folder or Path()
            return [f"{f.relative_to(root) if self.folder else f.name}:{file_digest(f)}" for f in self.files]
        import datasets

        with hub_errors(self.path):
            builder = datasets.load_dataset_builder(self.path, self.name)
        return [self.path, str(self.name), builder.hash]


class hub_errors:
    """A dataset that cannot be reached or found becomes one line naming the way out."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self) -> None:
        hub.go_offline_unless_reachable()

    def __exit__(self, kind, err, tb) -> None:
        if err is None or isinstance(err, UserError) or not isinstance(err, Exception):
            return
        reason = str(err).strip().splitlines()[0] if str(err).strip() else kind.__name__
        raise UserError(
            f"data.path {self.path} is not a local file or folder, and the Hugging Face hub could not give it "
            f"({kind.__name__}: {reason[:200]}); offline, download it where there is a network, or point data.path "
            f"at local files ({', '.join(sorted(BUILDERS))}) or a folder of them"
        ) from None


def looks_local(path: str) -> bool:
    return (path.startswith(("/", ".", "~")) or any(c in path for c in "*?[") or Path(path).suffix in BUILDERS
            or path.count("/") > 1)


class HFDataModule(TextDataModule):
    def __init__(
        self,
        path: str,
        name: str | None = None,
        text_column: str = "text",
        split: str = "train",
        val_split: str | None = "validation",
        val_size: float | int = 0.1,
        streaming: bool = False,
        cache_dir: str = "data/token-cache",
        tokenize_workers: int | None = None,
        progress: bool = True,
        **kwargs,
    ):
        """``kwargs`` are TextDataModule's window and loader settings (context_length, stride, batch_size,
        num_workers, shuffle)."""
        super().__init__(path=path, url=None, **kwargs)
        if isinstance(val_size, float) and val_size.is_integer() and val_size >= 1:
            val_size = int(val_size)
        if isinstance(val_size, bool) or not (
            (isinstance(val_size, float) and 0.0 < val_size < 1.0) or (isinstance(val_size, int) and val_size >= 1)
        ):
            raise UserError(
                f"data.val_size must be a fraction of the tokens (strictly between 0 and 1) or a number of tokens, "
                f"got {val_size!r}"
            )
        # What load_dataset is asked for, and how the splits are found or cut.
        self.source, self.name, self.text_column, self.streaming = str(path), name, text_column, streaming
        self.split, self.val_split, self.val_size = split, val_split, val_size
        # How the token cache is made.
        self.cache_dir, self.tokenize_workers, self.progress = Path(cache_dir), tokenize_workers, progress
        self.token_paths: dict[str, Path] | None = None

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node before the others read the caches in setup.
        if self.token_paths is None:
            self.token_paths = self.build()

    def build(self) -> dict[str, Path]:
        """The token file of the training split, and of the validation split when the dataset has one;
        tokenizes what is not cached yet."""
        source = Source(self.source, self.name)
        splits = source.split_names()
        if self.split not in splits:
            raise UserError(f"data.split {self.split!r} is not a split of {self.source}; it has: {', '.join(splits)}")
        roles = {"train": self.split}
        if self.val_split and self.val_split in splits and self.val_split != self.split:
            roles["val"] = self.val_split
        identity = source.identity()
        paths = {}
        for role, split in roles.items():
            key = cache_key(["hf", *identity, f"split={split}", f"column={self.text_column}"], "strict",
                            storable(self.tokenizer))
            target = self.cache_dir / f"{key}.tokens"
            if not verified(target):
                self.tokenize(source, split, target)
            paths[role] = target
        return paths

    def tokenize(self, source: Source, split: str, target: Path) -> None:
        dataset = source.load(split, streaming=self.streaming)
        if hasattr(dataset, "reshard"):
            # Arrow's scanner, under datasets, reads ahead of a slower consumer (the tokenizer) within a shard in
            # threads of its own: 797 MB of heap for 374 MB of text read as one file's shard, 398 MB with a shard
            # per parquet row group. The shards keep their order, and so do the tokens.
            dataset = dataset.reshard()
        workers = max(1, self.tokenize_workers or os.cpu_count() or 1)
        bar = tqdm(unit="B", unit_scale=True, desc=f"tokenizing {split}", disable=not self.progress)

        def texts() -> Iterator[list[str]]:
            for rows in dataset.iter(batch_size=ROWS_PER_TASK):
                if self.text_column not in rows:
                    raise UserError(
                        f"data.text_column {self.text_column!r} is not a column of {self.source}; its columns: "
                        f"{', '.join(rows)}"
                    )
                yield [t for t in rows[self.text_column] if t]

        def documents(results: Iterable[tuple[list[np.ndarray], int]]) -> Iterator[np.ndarray]:
            for arrays, size in results:
                yield from arrays
                bar.update(size)

        batches = texts()
        encode = functools.partial(encode_documents, tokenizer_path=self.tokenizer_path)
        tokenizer = self.tokenizer
        # Starting workers costs seconds; a dataset of a few batches is tokenized here before they would be up.
        head = list(itertools.islice(batches, 2 * workers))
        try:
            if workers == 1 or len(head) < 2 * workers:
                tokens = documents(map(encode, itertools.chain(head, batches)))
                write_token_file(target, tokens, tokenizer.n_vocab, tokenizer.eot_id)
            else:
                # A fork server, not a fork of this process (torch's thread pools), or spawned where there is none.
                with worker_context().Pool(workers) as pool:
                    tasks = itertools.chain(head, batches)
                    tokens = documents(ordered_map(pool, encode, tasks, 2 * workers))
                    write_token_file(target, tokens, tokenizer.n_vocab, tokenizer.eot_id)
        finally:
            bar.close()

    def documents(self, split: str = "train") -> Iterator[str]:
        """The text column of a split, row by row as the dataset streams, for training a tokenizer: the dataset's
        validation split as "val" when it has one, else every tenth row of the training split (its size is not
        known before the stream ends, so the last rows cannot be held out as setup holds them out)."""
        source = Source(self.source, self.name)
        has_val = bool(self.val_split) and self.val_split in source.split_names() and self.val_split != self.split
        dataset = source.load(self.val_split if split == "val" and has_val else self.split, streaming=True)
        row = 0
        for rows in dataset.iter(batch_size=ROWS_PER_TASK):
            if self.text_column not in rows:
                raise UserError(f"data.text_column {self.text_column!r} is not a column of {self.source}; its "
                                f"columns: {', '.join(rows)}")
            for text in rows[self.text_column]:
                held = not has_val and row % 10 == 9
                row += 1
                if text and (has_val or held == (split == "val")):
                    yield text

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.token_paths is None:
            self.token_paths = self.build()
        train = TokenFile(self.token_paths["train"])
        if "val" in self.token_paths:
            self.set_splits(train, TokenFile(self.token_paths["val"]))
            return
        held = self.val_size if isinstance(self.val_size, int) else len(train) - int((1 - self.val_size) * len(train))
        if held >= len(train):
            raise UserError(
                f"data.val_size={self.val_size} holds out {held} of the {len(train)} tokens of {self.source}; "
                "hold out fewer"
            )
        split = len(train) - held
        path = self.token_paths["train"]
        self.set_splits(TokenFile(path, 0, split), TokenFile(path, split, len(train)))
