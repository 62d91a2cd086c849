"""The textfiles corpus: tokens of every file joined by <|endoftext|>, cached, reused and invalidated."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from gptlit.data.textfiles import TextFilesDataModule
from gptlit.errors import UserError
from gptlit.data.token_cache import TokenFile
from gptlit.core.tokenizer import ENDOFTEXT_ID, encode


@pytest.fixture
def books(tmp_path, verdict_text) -> Path:
    """Five documents cut from The Verdict, with the edge cases: non-ASCII text, a literal <|endoftext|>,
    leading and trailing whitespace, and one file in a subfolder."""
    folder = tmp_path / "books"
    (folder / "shelf").mkdir(parents=True)
    rng = random.Random(0)
    names = ["a.txt", "b.txt", "c.txt", "shelf/d.txt", "e.txt"]
    for i, name in enumerate(names):
        start = rng.randrange(0, len(verdict_text) - 4000)
        text = verdict_text[start : start + rng.randrange(1500, 4000)]
        if i == 1:
            text = "  Café — naïve façade: 東京 🙂\n" + text + "\n\n"
        if i == 2:
            text = text[:500] + "<|endoftext|>" + text[500:]
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "notes.md").write_text("not a .txt file, not part of the corpus")
    return folder


def expected_tokens(folder: Path) -> list[int]:
    ids: list[int] = []
    for i, path in enumerate(sorted(folder.rglob("*.txt"))):
        if i:
            ids.append(ENDOFTEXT_ID)
        ids += encode(path.read_text(encoding="utf-8"))
    return ids


def datamodule(source, cache_dir, **kwargs) -> TextFilesDataModule:
    dm = TextFilesDataModule(
        path=str(source), cache_dir=str(cache_dir), context_length=16, batch_size=2, tokenize_workers=2,
        progress=False, **kwargs,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_token_file_holds_each_file_tokenized_and_joined_by_endoftext(books, tmp_path):
    dm = datamodule(books, tmp_path / "cache")
    tokens = TokenFile(dm.token_path)[:].tolist()
    assert tokens == expected_tokens(books)
    # The literal <|endoftext|> inside c.txt is the special token, as gptlit.core.tokenizer.encode makes it.
    assert tokens.count(ENDOFTEXT_ID) == 4 + 1


def test_windows_split_by_token_position_and_read_from_the_memmap(books, tmp_path):
    dm = datamodule(books, tmp_path / "cache", train_ratio=0.8)
    tokens = torch.tensor(expected_tokens(books))
    split = int(0.8 * len(tokens))
    for dataset, offset in ((dm.train_set, 0), (dm.val_set, split)):
        assert isinstance(dataset.tokens, TokenFile)
        for i in (0, len(dataset) // 2, len(dataset) - 1):
            x, y = dataset[i]
            start = offset + 16 * i
            assert x.dtype == y.dtype == torch.long
            assert torch.equal(x, tokens[start : start + 16]) and torch.equal(y, tokens[start + 1 : start + 17])
    assert len(dm.train_set) == len(range(0, split - 16, 16))
    assert len(dm.val_set) == len(range(0, len(tokens) - split - 16, 16))
    # What DataLoader workers receive: the path and the range, not the tokens.
    assert len(pickle.dumps(dm.train_set)) < 1000
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape == (2, 16)


def test_cache_is_reused_and_a_glob_finds_the_same_files(books, tmp_path):
    first = datamodule(books, tmp_path / "cache").token_path
    before = first.stat()
    os.utime(first, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))
    written = first.stat().st_mtime_ns
    again = datamodule(str(books / "**" / "*.txt"), tmp_path / "cache").token_path
    assert again == first
    # Not rewritten: the same inode with the mtime we set (a rebuild renames a new file into place).
    assert again.stat().st_ino == before.st_ino and again.stat().st_mtime_ns == written
    assert list((tmp_path / "cache").iterdir()) == [first]


def test_cache_is_invalidated_when_a_file_changes(books, tmp_path):
    first = datamodule(books, tmp_path / "cache").token_path
    path = books / "b.txt"
    stat = path.stat()
    # Same size and mtime: only the content tells the change.
    path.write_text(path.read_text(encoding="utf-8").replace("the", "THE", 1), encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    changed = datamodule(books, tmp_path / "cache").token_path
    assert changed != first
    assert TokenFile(changed)[:].tolist() == expected_tokens(books)
    (books / "f.txt").write_text("A new book.")
    added = datamodule(books, tmp_path / "cache").token_path
    assert added not in (first, changed)
    assert TokenFile(added)[:].tolist() == expected_tokens(books)


def test_bad_corpus_paths_and_bytes_are_user_errors(tmp_path, books):
    with pytest.raises(UserError, match="matches no .txt files"):
        datamodule(tmp_path / "nothing-here", tmp_path / "cache")
    (books / "bad.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(UserError, match="not valid UTF-8"):
        datamodule(books, tmp_path / "cache")
    dm = datamodule(books, tmp_path / "cache", encoding_errors="replace")
    assert len(dm.train_set) > 0
    # The failed build left no temporary file behind.
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"]


def test_a_tokenizer_too_large_for_the_token_cache_is_refused_in_one_line():
    from gptlit.data.token_cache import storable

    class Huge:
        name, n_vocab = "huge.json", 100_000

    with pytest.raises(UserError, match=r"huge.json has 100000 tokens; token caches store ids in 16 bits"):
        storable(Huge())
