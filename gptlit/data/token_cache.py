"""A folder of text files tokenized once into a cached, memory-mapped file of uint16 token ids.

The file holds every document's tokens in path order with ``<|endoftext|>`` between documents. Its name is a
digest of the documents' bytes, their order, the tokenizer and the decoding rule, so any edit to a file,
an added or removed file, or another tokenizer names another file, and an unchanged corpus finds the file of
the previous run. It is written to a temporary name and renamed into place, so a crash never leaves a
half-written cache that a later run would trust. Tokens are read back through ``TokenFile``, which maps the
file lazily: a window costs its own few bytes of memory whatever the corpus size.

A disk can still damage the file later. Its header carries what verifies it: the token count, the vocabulary
size and a CRC-32 of the tokens (``write_token_file``, which any pipeline writing this format calls). Opening a
file checks its header and length (a cut-off file fails here) and, up to ``FULL_CHECK_BYTES``, the checksum;
larger files are too costly to read through on every start. Every window's ids are checked against the
vocabulary as it is read, which is what catches damage inside those larger files: garbage bytes almost always
make an id out of range. A cache that fails at opening is rebuilt, with one line saying so; a damaged window is
refused with one line.
"""

from __future__ import annotations

import glob
import hashlib
import multiprocessing
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from gptlit.errors import UserError
from gptlit.files import atomic_write
from gptlit.core.tokenizer import ENDOFTEXT_ID, Tokenizer, load_tokenizer

# Bumped whenever the file layout changes, so caches written by older code are never read.
CACHE_FORMAT = "gptlit-tokens-v2"
TOKEN_DTYPE = np.uint16
_READ_CHUNK = 1 << 20
# magic, format version, vocabulary size, token count, CRC-32 of the token bytes, reserved; little-endian.
HEADER = struct.Struct("<8sIIQII")
MAGIC = b"GPTLTOK\0"
VERSION = 2
# Files up to this size have their checksum verified whenever they are opened (about 0.4 s per GB here).
FULL_CHECK_BYTES = 1 << 30


class DamagedTokenFile(UserError):
    """A token file that does not verify: cut short, overwritten, or not a token file at all."""


@dataclass(frozen=True)
class TokenFileHeader:
    vocab_size: int
    count: int
    crc32: int


def write_token_file(path: str | Path, documents: Iterable[np.ndarray], vocab_size: int,
                     separator: int | None = ENDOFTEXT_ID) -> TokenFileHeader:
    """Write the token ids of ``documents``, in order and joined by ``separator``, as a verifiable token file.

    The file appears whole or not at all (gptlit.files.atomic_write: a full disk is one line). Ids outside the
    vocabulary are a bug in the pipeline that made them and are refused before anything is in place.
    """
    sep = None if separator is None else np.array([separator], dtype=TOKEN_DTYPE)
    count, crc = 0, 0
    with atomic_write(path) as out:
        out.write(b"\0" * HEADER.size)  # filled in once the count and checksum are known
        for i, ids in enumerate(documents):
            ids = np.asarray(ids)
            if ids.size and int(ids.max()) >= vocab_size:
                raise ValueError(f"token id {int(ids.max())} of document {i} is outside the vocabulary ({vocab_size})")
            ids = ids.astype(TOKEN_DTYPE, copy=False)
            for part in ((sep, ids) if i and sep is not None else (ids,)):
                data = memoryview(np.ascontiguousarray(part)).cast("B")
                out.write(data)
                crc = zlib.crc32(data, crc)
                count += part.size
        out.seek(0)
        header = TokenFileHeader(vocab_size, count, crc)
        out.write(HEADER.pack(MAGIC, VERSION, vocab_size, count, crc, 0))
    return header


def read_header(path: str | Path, full_check: bool | None = None) -> TokenFileHeader:
    """The header of a token file, once the file's length (and, for files up to FULL_CHECK_BYTES or with
    ``full_check``, its checksum) agrees with it; DamagedTokenFile says what does not."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(HEADER.size)
        if len(raw) < HEADER.size:
            raise DamagedTokenFile(f"token file {path} is cut short ({size} bytes, less than its header)")
        magic, version, vocab_size, count, crc, _ = HEADER.unpack(raw)
        if magic != MAGIC or version != VERSION:
            raise DamagedTokenFile(f"token file {path} has no gptlit token header (overwritten, or not a token file)")
        expected = HEADER.size + count * np.dtype(TOKEN_DTYPE).itemsize
        if size != expected:
            raise DamagedTokenFile(f"token file {path} holds {size} bytes where its header says {expected} "
                                   f"({count} tokens): it was cut short or appended to")
        if full_check if full_check is not None else size <= FULL_CHECK_BYTES:
            actual = 0
            while chunk := f.read(16 * _READ_CHUNK):
                actual = zlib.crc32(chunk, actual)
            if actual != crc:
                raise DamagedTokenFile(f"token file {path} does not match the checksum it was written with: "
                                       "bytes in it were changed")
    return TokenFileHeader(vocab_size, count, crc)


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


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tokenize_file(job: tuple[Path, str, str | None]) -> np.ndarray:
    """One document's token ids, by the tokenizer at ``tokenizer_path`` (None: GPT-2's), in a compact array."""
    path, encoding_errors, tokenizer_path = job
    try:
        text = path.read_text(encoding="utf-8", errors=encoding_errors)
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path} is not valid UTF-8 at byte {err.start}; convert it to UTF-8 or set "
            "data.encoding_errors=replace to replace the bad bytes"
        ) from None
    return load_tokenizer(tokenizer_path).encode_array(text).astype(TOKEN_DTYPE)


def encode_documents(texts: list[str], tokenizer_path: str | None = None) -> tuple[list[np.ndarray], int]:
    """The token arrays of a batch of documents (encoded as one batch) and their size in UTF-8 bytes (for a
    progress bar). Here, not beside its caller, so that worker processes import this light module only."""
    ids = load_tokenizer(tokenizer_path).encode_batch(texts)
    return [np.asarray(i, dtype=TOKEN_DTYPE) for i in ids], sum(len(t.encode("utf-8")) for t in texts)


def storable(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer``, when its ids fit the token file's 16-bit entries."""
    if tokenizer.n_vocab > np.iinfo(TOKEN_DTYPE).max + 1:
        raise UserError(f"tokenizer {tokenizer.name} has {tokenizer.n_vocab} tokens; token caches store ids in 16 "
                        "bits, so at most 65536: train one with a smaller vocab_size, or read the text with data=text "
                        "(no cache), as Llama 3's and Qwen3's own tokenizers need for now")
    return tokenizer


def cache_key(digests: Iterable[str], encoding_errors: str, tokenizer: Tokenizer) -> str:
    """Names a token file by everything its tokens depend on, the tokenizer's encoding included: a changed
    tokenizer never reuses stale tokens."""
    key = hashlib.blake2b(digest_size=16)
    for part in (CACHE_FORMAT, tokenizer.fingerprint, encoding_errors, *digests):
        key.update(part.encode())
        key.update(b"\0")
    return key.hexdigest()


def worker_context() -> multiprocessing.context.BaseContext:
    """Where tokenizing workers come from: a fork server, not a fork of this process, since forking a process that
    already runs torch's thread pools can deadlock; the server imports the tokenizer once for every pool after it.
    Windows has no fork server: its workers are spawned, each importing the tokenizer itself."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def build_token_cache(
    files: list[Path],
    cache_dir: str | Path,
    workers: int | None = None,
    encoding_errors: str = "strict",
    progress: bool = True,
    tokenizer_path: str | None = None,
) -> Path:
    """Path of the token file for ``files``; tokenizes them in ``workers`` processes only when it is missing
    or does not verify."""
    cache_dir = Path(cache_dir)
    workers = max(1, min(workers or os.cpu_count() or 1, len(files)))
    context = worker_context()
    pool = context.Pool(workers) if workers > 1 else _InProcess()
    with pool:
        digests = list(pool.imap(file_digest, files, chunksize=16))
        tokenizer = storable(load_tokenizer(tokenizer_path))
        target = cache_dir / f"{cache_key(digests, encoding_errors, tokenizer)}.tokens"
        if target.exists():
            if verified(target):
                return target
        total = sum(f.stat().st_size for f in files)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not progress)

        def documents() -> Iterator[np.ndarray]:
            # imap keeps file order, so documents land in path order whichever worker finishes first.
            jobs = [(f, encoding_errors, tokenizer_path) for f in files]
            for path, ids in zip(files, pool.imap(tokenize_file, jobs)):
                yield ids
                bar.update(path.stat().st_size)

        try:
            write_token_file(target, documents(), tokenizer.n_vocab, tokenizer.eot_id)
        finally:
            bar.close()
    return target


def verified(target: Path) -> bool:
    """Whether the token file ``target`` exists and verifies; a damaged one is derived data whose corpus is at
    hand, so the caller makes it again (with a warning) rather than failing."""
    if not target.exists():
        return False
    try:
        read_header(target)
        return True
    except DamagedTokenFile as err:
        print(f"warning: {err}; tokenizing the corpus again", file=sys.stderr, flush=True)
        return False


class _InProcess:
    """The two Pool methods build_token_cache uses, run in this process: no worker start-up for one file."""

    def imap(self, fn, items, chunksize: int = 1):
        return map(fn, items)

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc) -> None:
        return None


class TokenFile:
    """Tokens ``start:stop`` of a token file, sliced like an array and mapped into memory on first use; every
    slice read is checked against the vocabulary the header names.

    Pickling (DataLoader workers under spawn) carries the path and the range, never the tokens.
    """

    def __init__(self, path: str | Path, start: int = 0, stop: int | None = None, header: TokenFileHeader | None = None):
        """``header`` is what read_header returned, when the caller has verified the file already."""
        self.path = Path(path)
        self.header = header or read_header(self.path)
        total = self.header.count
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
            self._tokens = np.memmap(self.path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER.size)[self.start : self.stop]
        tokens = self._tokens[key]
        if tokens.size and int(tokens.max()) >= self.header.vocab_size:
            where = self.start + (key.start or 0) + int(np.argmax(tokens >= self.header.vocab_size))
            raise DamagedTokenFile(
                f"token file {self.path} is damaged: token {where} is {int(tokens.max())}, outside the vocabulary "
                f"({self.header.vocab_size}); delete the file and run again to tokenize the corpus anew"
            )
        return tokens

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}
