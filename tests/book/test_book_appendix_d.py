import pytest
"""`experiment=book_appendix_d` against the book's own appendix-D train_model, on a small model in a few minutes.

The model is wide enough (emb_dim 128) that the global gradient norm stays above 1.0 after warmup, so the
book's clipping changes every step from the first one after warmup on: a clip that started a step late (the
printed book's `>`), a rate off by one step or an evaluation out of place would change the printed losses.
"""

import re

import torch
from llms_from_scratch.appendix_d import train_model
from llms_from_scratch.ch04 import GPTModel as BookGPTModel

from gptlit.cli.build import fit
from gptlit.core.tokenizer import get_tokenizer

from ..book_reference import assert_same_weights, book_loaders
from ..conftest import compose_run

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow

SIZE = {"emb_dim": 128, "n_heads": 4, "n_layers": 2}
CONTEXT, EPOCHS = 64, 1


def book_run(text):
    """Appendix D's training cells, with the model, the context and the epochs shrunk."""
    tokenizer = get_tokenizer()
    train_loader, val_loader = book_loaders(text, tokenizer, CONTEXT)
    warmup_steps = int(0.2 * len(train_loader) * EPOCHS)
    torch.manual_seed(123)
    cfg = {"vocab_size": 50257, "context_length": CONTEXT, "drop_rate": 0.1, "qkv_bias": False, **SIZE}
    model = BookGPTModel(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.001, weight_decay=0.1)
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(*args, **kwargs):
        norms.append(clip(*args, **kwargs).item())
        return norms[-1]

    torch.nn.utils.clip_grad_norm_ = recording_clip
    try:
        _, _, _, rates = train_model(
            model, train_loader, val_loader, optimizer, "cpu", n_epochs=EPOCHS, eval_freq=5, eval_iter=1,
            start_context="Every effort moves you", tokenizer=tokenizer, warmup_steps=warmup_steps,
            initial_lr=1e-5, min_lr=1e-5,
        )
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
    return model, rates, warmup_steps, norms


def printed_lines(out):
    return [line.strip() for line in out.replace("\r", "\n").splitlines()
            if re.match(r"\s*(Ep \d+ \(Iter|Every effort)", line)]


def test_book_appendix_d_prints_the_books_lines(tmp_path, verdict_path, verdict_text, capsys):
    book, rates, warmup_steps, norms = book_run(verdict_text)
    expected = printed_lines(capsys.readouterr().out)
    # The book clipped every step from warmup_steps on, and each of those clips changed the gradients.
    assert len(norms) == len(rates) - warmup_steps and min(norms) > 1.0
    cfg = compose_run(
        "experiment=book_appendix_d", f"data.path={verdict_path}", f"data.context_length={CONTEXT}",
        f"trainer.max_epochs={EPOCHS}", *[f"model.{k}={v}" for k, v in SIZE.items()], run_dir=tmp_path,
    )
    trainer = fit(cfg)
    ours = printed_lines(capsys.readouterr().out)
    assert len(expected) == len(range(0, len(rates), 5)) + EPOCHS
    assert ours == expected
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.warmup_steps == warmup_steps and scheduler.total_steps == len(rates)
    assert_same_weights(trainer.lightning_module.model, book)
