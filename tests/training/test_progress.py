"""The progress bar covers the whole run: epochs from 1, steps of the whole run, the token budget, resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import open_dict

from gptlit.cli.build import fit
from gptlit.training.callbacks.progress_bar import ProgressBar

from ..conftest import compose_train

# 22 training windows of 32 tokens: 11 batches of 2, 11 optimizer steps an epoch.
TEXT_CHARS = 3200


@pytest.fixture
def short_text(tmp_path, verdict_text) -> Path:
    path = tmp_path / "short.txt"
    path.write_text(verdict_text[:TEXT_CHARS], encoding="utf-8")
    return path


def run_with_bar(run_dir: Path, text: Path, *overrides: str) -> ProgressBar:
    cfg = compose_train(run_dir, f"data.path={text}", "data.batch_size=2", "trainer.limit_val_batches=0", *overrides)
    with open_dict(cfg):
        cfg.callbacks.progress_bar = {"_target_": "gptlit.training.callbacks.progress_bar.ProgressBar"}
        cfg.trainer.enable_progress_bar = True
    trainer = fit(cfg)
    return next(c for c in trainer.callbacks if isinstance(c, ProgressBar))


def test_one_bar_counts_the_steps_of_the_whole_run_and_epochs_from_one(tmp_path, short_text, capsys):
    bar = run_with_bar(tmp_path, short_text, "trainer.max_epochs=2").train_progress_bar
    out = capsys.readouterr().out
    assert (bar.n, bar.total) == (22, 22)
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "Epoch 0" not in out
    assert "11/22" in out and "22/22" in out


def test_a_token_budget_shows_tokens_done_against_it(tmp_path, short_text, capsys):
    # 64 tokens a step: 500 tokens take 8 steps, 512 tokens.
    bar = run_with_bar(tmp_path, short_text, "trainer.max_tokens=500").train_progress_bar
    out = capsys.readouterr().out
    assert (bar.n, bar.total) == (8, 8)
    assert "tokens=512/500" in out and "tokens=64/500" in out


def test_a_run_resumed_mid_epoch_starts_where_it_stopped(tmp_path, short_text, capsys):
    # A checkpoint written after step 3 of the 11 of epoch 1, as the interrupt handler writes one.
    mid_epoch = ("+callbacks.mid_epoch={_target_:lightning.pytorch.callbacks.ModelCheckpoint,"
                 f"dirpath:{tmp_path / 'mid'},filename:step3,every_n_train_steps:3,save_top_k:1,monitor:null}}")
    run_with_bar(tmp_path / "first", short_text, "trainer.max_steps=4", mid_epoch)
    capsys.readouterr()
    ckpt = tmp_path / "mid" / "step3.ckpt"
    bar = run_with_bar(tmp_path / "resumed", short_text, "trainer.max_steps=8", f"ckpt_path={ckpt}").train_progress_bar
    out = capsys.readouterr().out
    assert (bar.initial, bar.n, bar.total) == (3, 8, 8)
    assert "Epoch 1/10" in out and "4/8" in out and "/?" not in out and "Epoch 2" not in out
