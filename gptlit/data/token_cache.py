"""A folder of text files tokenized once into a cached, memory-mapped file of uint16 token ids.

The file holds every document's tokens in path order with ``<|endoftext|>`` between documents. Its name is a
digest of the documents' bytes, their order, the tokenizer and the decoding rule, so any edit to a file,
an added or removed file, or another tokenizer names another file, and an unchanged corpus finds the file of
the previous run. It is written to a temporary name and renamed into place, so a crash never leaves a
half-written cache that a later run would trust. Tokens are read back through ``TokenFile``, which maps the
file lazily: a window costs its own few bytes of memory whatever the corpus size.
"""

from __future__ import annotations

import glob
import hashlib
import multiprocessing
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from gptlit.errors import UserError
from gptlit.files import atomic_write
from gptlit.core.tokenizer import (
    ENCODER_JSON_SHA256,
    ENDOFTEXT,
    ENDOFTEXT_ID,
    VOCAB_BPE_SHA256,
    get_tokenizer,
)

# Bumped whenever the file layout changes, so caches written by older code are never read.
CACHE_FORMAT = "gptlit-tokens-v1"
TOKEN_DTYPE = np.uint16
_READ_CHUNK = 1 << 20


def find_text_files(source: str | Path) -> list[Path]:
    """The .txt files under a folder (recursively), a single file, or the files a glob matches, in path order."""
    path = Path(source)
    if path.is_dir():
        files = [f for f in path.rglob("*.txt") if f.is_file()]
    elif path.is_file():
        files = [path]
    else:
        files = [Path(f) for f in glob.glob(str(source), recursive=True) if Path(f).is_file()]
    if not files:
        raise UserError(
            f"data.path {source} matches no .txt files; point it at a folder of .txt files, one file, or a glob "
            "such as 'books/*.txt'"
        )
    return sorted(files)


def tokenizer_fingerprint() -> str:
    tok = get_tokenizer()
    special = sorted(tok._special_tokens.items())
    return f"{tok.name}|{tok.n_vocab}|{tok._pat_str}|{special}|{VOCAB_BPE_SHA256}|{ENCODER_JSON_SHA256}"


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tokenize_file(job: tuple[Path, str]) -> np.ndarray:
    """One document's token ids, as gptlit.core.tokenizer.encode gives them, straight into a compact array."""
    path, encoding_errors = job
    try:
        text = path.read_text(encoding="utf-8", errors=encoding_errors)
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path} is not valid UTF-8 at byte {err.start}; convert it to UTF-8 or set "
            "data.encoding_errors=replace to replace the bad bytes"
        ) from None
    return encode_document(text)


def encode_documents(texts: list[str]) -> tuple[list[np.ndarray], int]:
    """The token arrays of a batch of documents and their size in UTF-8 bytes (for a progress bar). Here, not
    beside its caller, so that worker processes import this light module only."""
    return [encode_document(t) for t in texts], sum(len(t.encode("utf-8")) for t in texts)


def encode_document(text: str) -> np.ndarray:
    """One document's token ids, as gptlit.core.tokenizer.encode gives them, straight into a compact array."""
    # encode_to_numpy skips the Python list of ints that encode builds (about 36 bytes per token); the
    # allowed special token is the one gptlit.core.tokenizer.encode allows.
    return get_tokenizer().encode_to_numpy(text, allowed_special={ENDOFTEXT}).astype(TOKEN_DTYPE)


def cache_key(digests: Iterable[str], encoding_errors: str) -> str:
    key = hashlib.blake2b(digest_size=16)
    for part in (CACHE_FORMAT, tokenizer_fingerprint(), encoding_errors, *digests):
        key.update(part.encode())
        key.update(b"\0")
    return key.hexdigest()


def build_token_cache(
    files: list[Path],
    cache_dir: str | Path,
    workers: int | None = None,
    encoding_errors: str = "strict",
    progress: bool = True,
) -> Path:
    """Path of the token file for ``files``; tokenizes them in ``workers`` processes only when it is missing."""
    cache_dir = Path(cache_dir)
    workers = max(1, min(workers or os.cpu_count() or 1, len(files)))
    # Workers come from a fork server, not a fork of this process: forking a process that already runs
    # torch's thread pools can deadlock. The server imports the tokenizer once for every pool after it.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    pool = context.Pool(workers) if workers > 1 else _InProcess()
    with pool:
        digests = list(pool.imap(file_digest, files, chunksize=16))
        target = cache_dir / f"{cache_key(digests, encoding_errors)}.tokens"
        if target.exists():
            return target
        total = sum(f.stat().st_size for f in files)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not progress)

        def documents() -> Iterator[np.ndarray]:
            # imap keeps file order, so documents land in path order whichever worker finishes first.
            for path, ids in zip(files, pool.imap(tokenize_file, [(f, encoding_errors) for f in files])):
                yield ids
                bar.update(path.stat().st_size)

        try:
            write_token_cache(target, documents())
        finally:
            bar.close()
    return target


def write_token_cache(target: str | Path, documents: Iterable[np.ndarray]) -> Path:
    """Write every document's tokens, in order, ``<|endoftext|>`` between documents, to ``target``: under a
    temporary name renamed into place once complete, so an interrupted write leaves no cache behind. Every
    corpus reader (data=textfiles, data=hf) writes through here: one file format, one window reader."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    separator = np.array([ENDOFTEXT_ID], dtype=TOKEN_DTYPE)
    with atomic_write(target) as out:
        for i, ids in enumerate(documents):
            if i:
                separator.tofile(out)
            ids.astype(TOKEN_DTYPE, copy=False).tofile(out)
    return target


class _InProcess:
    """The two Pool methods build_token_cache uses, run in this process: no worker start-up for one file."""

    def imap(self, fn, items, chunksize: int = 1):
        return map(fn, items)

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc) -> None:
        return None


class TokenFile:
    """Tokens ``start:stop`` of a token file, sliced like an array and mapped into memory on first use.

    Pickling (DataLoader workers under spawn) carries the path and the range, never the tokens.
    """

    def __init__(self, path: str | Path, start: int = 0, stop: int | None = None):
        self.path = Path(path)
        total = self.path.stat().st_size // np.dtype(TOKEN_DTYPE).itemsize
        self.start = start
        self.stop = total if stop is None else stop
        if not 0 <= self.start <= self.stop <= total:
            raise ValueError(f"token range {start}:{stop} is outside {self.path} ({total} tokens)")
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("TokenFile is read by slices")
        if self._tokens is None:
            # An empty file cannot be memory-mapped; it holds no window anyway.
            if len(self) == 0:
                return np.zeros(0, dtype=TOKEN_DTYPE)
            self._tokens = np.memmap(self.path, dtype=TOKEN_DTYPE, mode="r")[self.start : self.stop]
        return self._tokens[key]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}
