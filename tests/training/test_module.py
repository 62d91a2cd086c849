import math

import lightning as L
import pytest
import torch
from llms_from_scratch.ch05 import evaluate_model

from gptlit.data.text import TextDataModule
from gptlit.training.module import GPTLitModule, cross_entropy


def test_loss_is_the_mean_negative_log_likelihood():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[0, 4, 2], [1, 1, 3]])
    by_hand = 0.0
    for b in range(2):
        for t in range(3):
            row = logits[b, t]
            by_hand -= row[targets[b, t]].item() - math.log(sum(math.exp(v) for v in row.tolist()))
    assert cross_entropy(logits, targets).item() == pytest.approx(by_hand / 6, rel=1e-6)


def quiet_trainer(**kwargs):
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_evaluation_is_the_books_evaluate_model(verdict_path, tiny_cfg, capsys):
    dm = TextDataModule(path=str(verdict_path), context_length=32, batch_size=4, url=None)
    dm.setup("fit")
    module = GPTLitModule({**tiny_cfg, "context_length": 32})
    torch.manual_seed(42)
    quiet_trainer(limit_val_batches=5).validate(module, datamodule=dm, verbose=False)
    torch.manual_seed(42)
    train_eval, val = dm.val_dataloader()
    book_train, book_val = evaluate_model(module.model, train_eval, val, "cpu", eval_iter=5)
    entry = module.history[-1]
    assert entry["train_loss"] == pytest.approx(book_train, abs=1e-6)
    assert entry["val_loss"] == pytest.approx(book_val, abs=1e-6)
    assert f"Train loss {book_train:.3f}, Val loss {book_val:.3f}" in capsys.readouterr().out


def test_training_lowers_the_loss_and_counts_tokens(verdict_path, tiny_cfg):
    dm = TextDataModule(path=str(verdict_path), context_length=32, batch_size=4, url=None)
    module = GPTLitModule({**tiny_cfg, "context_length": 32, "drop_rate": 0.0},
                          optimizer=lambda model: torch.optim.AdamW(model.parameters(), lr=3e-3))
    trainer = quiet_trainer(max_steps=30, val_check_interval=10, check_val_every_n_epoch=None,
                            limit_val_batches=2, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    losses = [h["train_loss"] for h in module.history]
    assert [h["step"] for h in module.history] == [10, 20, 30]
    assert losses[-1] < losses[0] - 1.0
    assert module.history[-1]["tokens_seen"] == 30 * 4 * 32
    assert trainer.callback_metrics["val/perplexity"].item() == pytest.approx(
        math.exp(module.history[-1]["val_loss"]), rel=1e-5)
