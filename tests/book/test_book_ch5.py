import pytest
"""`experiment=book_ch5` against the book's own train_model_simple, on a tiny model in seconds."""

import re

import torch
from llms_from_scratch.ch04 import GPTModel as BookGPTModel
from llms_from_scratch.ch05 import train_model_simple

from gptlit.core.tokenizer import get_tokenizer
from gptlit.cli.build import fit as train

from ..book_reference import assert_same_weights, book_loaders
from ..conftest import compose_run

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow

TINY = {"emb_dim": 32, "n_heads": 4, "n_layers": 2}
CONTEXT, EPOCHS = 64, 2


def book_run(text):
    """Chapter 5's training script, with the model and context shrunk."""
    tokenizer = get_tokenizer()
    train_loader, val_loader = book_loaders(text, tokenizer, CONTEXT)
    torch.manual_seed(123)
    cfg = {"vocab_size": 50257, "context_length": CONTEXT, "drop_rate": 0.1, "qkv_bias": False, **TINY}
    model = BookGPTModel(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1)
    train_model_simple(model, train_loader, val_loader, optimizer, "cpu", num_epochs=EPOCHS, eval_freq=5,
                       eval_iter=5, start_context="Every effort moves you", tokenizer=tokenizer)
    return model


def printed_lines(out):
    return [line.strip() for line in out.replace("\r", "\n").splitlines()
            if re.match(r"\s*(Ep \d+ \(Step|Every effort)", line)]


def test_book_ch5_prints_the_books_lines(tmp_path, verdict_path, verdict_text, capsys):
    book = book_run(verdict_text)
    expected = printed_lines(capsys.readouterr().out)
    cfg = compose_run(
        "experiment=book_ch5", f"data.path={verdict_path}", f"data.context_length={CONTEXT}",
        f"trainer.max_epochs={EPOCHS}", *[f"model.{k}={v}" for k, v in TINY.items()], run_dir=tmp_path,
    )
    trainer = train(cfg)
    ours = printed_lines(capsys.readouterr().out)
    assert sum(line.startswith("Ep ") for line in expected) == 15 and len(expected) == 15 + EPOCHS
    assert ours == expected
    # Not only the printed three decimals: every weight after 18 steps is the book's to the last bit.
    assert_same_weights(trainer.lightning_module.model, book)
