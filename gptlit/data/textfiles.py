"""Many text files as one corpus larger than memory: TextDataModule's windows over a cached token file.

The files are tokenized once into a memory-mapped token file (gptlit.data.token_cache), ``<|endoftext|>`` between
documents. The split is by token position: the first ``train_ratio`` of the corpus's tokens train, the rest
validate, so the ratio holds exactly whatever the documents' sizes (a split at a document boundary could be
far off with a few long books); the document that straddles the split contributes to both sides, as The
Verdict does in the book's character split.
"""

from __future__ import annotations

from pathlib import Path

from gptlit.data.text import TextDataModule
from gptlit.data.token_cache import TokenFile, build_token_cache, find_text_files, read_header


class TextFilesDataModule(TextDataModule):
    def __init__(
        self,
        path: str,
        cache_dir: str = "data/token-cache",
        tokenize_workers: int | None = None,
        progress: bool = True,
        **kwargs,
    ):
        """``kwargs`` are TextDataModule's window and loader settings (context_length, stride, batch_size,
        train_ratio, num_workers, shuffle, encoding_errors); a corpus is never downloaded."""
        super().__init__(path=path, url=None, **kwargs)
        self.source = str(path)
        self.cache_dir = Path(cache_dir)
        self.tokenize_workers = tokenize_workers
        self.progress = progress
        self.token_path: Path | None = None

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node, before the others read the cache in setup. train.py
        # calls it once before Lightning does, so the corpus is hashed once, not twice.
        if self.token_path is None:
            self.token_path = self.build()

    def build(self) -> Path:
        return build_token_cache(
            find_text_files(self.source),
            self.cache_dir,
            workers=self.tokenize_workers,
            encoding_errors=self.encoding_errors,
            progress=self.progress,
            tokenizer_path=self.tokenizer_path,
        )

    def text_files(self) -> list[Path]:
        return find_text_files(self.source)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.token_path is None:
            # The other ranks find the file prepare_data wrote (hashing the files again to name it).
            self.token_path = self.build()
        header = read_header(self.token_path, full_check=False)  # build_token_cache has verified it
        split = int(self.train_ratio * header.count)
        self.set_splits(
            TokenFile(self.token_path, 0, split, header), TokenFile(self.token_path, split, header.count, header)
        )
