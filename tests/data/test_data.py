import io
import urllib.request

import pytest
import torch
from llms_from_scratch.ch02 import GPTDatasetV1
from torch.utils.data import DataLoader

from gptlit.data.text import VERDICT_URL, TextDataModule, TokenWindows
from gptlit.errors import UserError
from gptlit.core.tokenizer import encode, get_tokenizer


def book_loader(text, batch_size, max_length, stride, shuffle, drop_last):
    # create_dataloader_v1 with the tokenizer passed in (the book's fetches tiktoken's, which needs the network).
    dataset = GPTDatasetV1(text, get_tokenizer(), max_length, stride)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)


def datamodule(path, **kwargs):
    dm = TextDataModule(path=str(path), url=None, **kwargs)
    dm.setup("fit")
    return dm


def test_the_books_batches_at_context_256(verdict_path):
    dm = datamodule(verdict_path, context_length=256)
    train = list(dm.train_dataloader())
    train_eval, val = dm.val_dataloader()
    assert len(train) == 9
    assert all(x.shape == (2, 256) and y.shape == (2, 256) for x, y in train)
    assert len(val) == 1


@pytest.mark.parametrize("context_length, stride", [(256, 256), (64, 32), (100, 7)])
def test_windows_equal_the_books_dataloader(verdict_text, verdict_path, context_length, stride):
    split = int(0.9 * len(verdict_text))
    dm = datamodule(verdict_path, context_length=context_length, stride=stride, batch_size=3, shuffle=False)
    for ours, text, drop_last in (
        (dm.train_dataloader(), verdict_text[:split], True),
        (dm.val_dataloader()[1], verdict_text[split:], False),
    ):
        book = book_loader(text, 3, context_length, stride, shuffle=False, drop_last=drop_last)
        assert len(ours) == len(book)
        for (x, y), (bx, by) in zip(ours, book):
            assert torch.equal(x, bx) and torch.equal(y, by)


def test_shuffled_order_equals_the_books_under_the_same_seed(verdict_text, verdict_path):
    split = int(0.9 * len(verdict_text))
    dm = datamodule(verdict_path, context_length=256)
    torch.manual_seed(123)
    ours = [x for x, _ in dm.train_dataloader()]
    torch.manual_seed(123)
    book = [x for x, _ in book_loader(verdict_text[:split], 2, 256, 256, shuffle=True, drop_last=True)]
    assert all(torch.equal(a, b) for a, b in zip(ours, book)) and len(ours) == len(book)


def test_targets_are_inputs_shifted_by_one():
    tokens = torch.arange(20)
    windows = TokenWindows(tokens, context_length=4, stride=3)
    assert len(windows) == len(range(0, 20 - 4, 3))
    for i in range(len(windows)):
        x, y = windows[i]
        assert torch.equal(x, tokens[3 * i : 3 * i + 4]) and torch.equal(y, tokens[3 * i + 1 : 3 * i + 5])
    with pytest.raises(IndexError):
        windows[len(windows)]


def test_split_is_by_characters(tmp_path):
    text = "a" * 900 + " b" * 50
    path = tmp_path / "t.txt"
    path.write_text(text)
    dm = datamodule(path, context_length=4, train_ratio=0.9)
    assert dm.val_set.tokens.tolist() == encode(text[900:])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"context_length": 0}, "data.context_length must be a positive integer"),
        ({"batch_size": -2}, "data.batch_size must be a positive integer"),
        ({"stride": 0}, "data.stride must be a positive integer"),
        ({"train_ratio": 1.0}, "data.train_ratio must be strictly between 0 and 1"),
        ({"num_workers": -1}, "data.num_workers must be a non-negative integer"),
    ],
)
def test_bad_settings_are_refused(verdict_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        TextDataModule(path=str(verdict_path), **kwargs)


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        datamodule(tmp_path / "missing.txt")
    with pytest.raises(UserError, match="is not a file"):
        datamodule(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="is empty"):
        datamodule(tmp_path / "empty.txt")
    (tmp_path / "short.txt").write_text("Every effort moves you. " * 120)
    with pytest.raises(UserError, match=r"the val split of .* has \d+ tokens but one window needs 257"):
        datamodule(tmp_path / "short.txt", context_length=256)


def test_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(("caf\xe9 " * 400).encode("latin-1"))
    with pytest.raises(UserError, match="not valid UTF-8 at byte 3; .*data.encoding_errors=replace"):
        datamodule(path, context_length=8)
    dm = datamodule(path, context_length=8, encoding_errors="replace")
    assert len(dm.train_set) > 0


def fake_download(monkeypatch, text):
    """urlopen answering every URL with ``text``; returns the list of URLs asked for."""
    fetched = []

    def urlopen(url, timeout):
        fetched.append(url)
        return io.BytesIO(text.encode("utf-8"))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return fetched


def test_a_mistyped_path_is_never_downloaded(tmp_path, monkeypatch, verdict_text):
    fetched = fake_download(monkeypatch, verdict_text)
    typo = tmp_path / "the-verdcit.txt"
    dm = TextDataModule(path=str(typo))  # the default url
    dm.prepare_data()
    with pytest.raises(UserError, match=f"data.path {typo} does not exist; point data.path at a UTF-8 text file"):
        dm.setup("fit")
    assert fetched == [] and not typo.exists()


def test_the_default_corpus_is_downloaded_to_its_default_path(tmp_path, monkeypatch, verdict_text):
    fetched = fake_download(monkeypatch, verdict_text)
    monkeypatch.chdir(tmp_path)
    dm = TextDataModule(context_length=32)
    dm.prepare_data()
    dm.setup("fit")
    assert fetched == [VERDICT_URL]
    assert (tmp_path / "data" / "the-verdict.txt").read_text(encoding="utf-8") == verdict_text


def test_missing_default_corpus_without_network_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dm = TextDataModule(url="http://127.0.0.1:9/none.txt")
    with pytest.raises(UserError, match="could not be downloaded .* put a UTF-8 text file there"):
        dm.prepare_data()
    assert not (tmp_path / "data").exists()  # nothing written, not even the folder
