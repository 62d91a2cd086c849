"""trainer.tokens_per_step and trainer.max_tokens: a global batch in tokens made of accumulated micro-batches,
the same update as one big batch alone and under DDP, and a run that ends on a token budget."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from gptlit.cli.build import build, fit
from gptlit.errors import find_user_error
from gptlit.weights.io import read_checkpoint

from ..conftest import compose_train
from .test_distributed import max_weight_diff, run_train

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow

CONTEXT = 32
# The first 3200 characters of The Verdict: 22 training windows of 32 tokens. One process with batches of 4 uses
# 20 of them in 5 steps per epoch; batches of 2 accumulated over 2 leave an odd 11th batch at the end of each
# epoch, which must not become a step of its own.
TEXT_CHARS = 3200
STEPS = 6  # crosses the end of the first epoch


@pytest.fixture
def short_text(tmp_path, verdict_text) -> Path:
    path = tmp_path / "short.txt"
    path.write_text(verdict_text[:TEXT_CHARS], encoding="utf-8")
    return path


def same_run(run_dir: Path, text: Path, *overrides: str):
    """A short, deterministic run: no dropout, no shuffling, a large rate so that differences show."""
    return compose_train(
        run_dir, f"data.path={text}", f"data.context_length={CONTEXT}", "model.drop_rate=0", "data.shuffle=false",
        "optimizer.lr=0.004", f"trainer.max_steps={STEPS}", "trainer.limit_val_batches=0", *overrides,
    )


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def test_accumulated_micro_batches_give_the_update_of_one_big_batch(tmp_path, short_text):
    big = fit(same_run(tmp_path / "big", short_text, "data.batch_size=4"))
    accumulated = fit(
        same_run(tmp_path / "acc", short_text, "data.batch_size=2", f"trainer.tokens_per_step={4 * CONTEXT}")
    )
    # The control: the same micro-batches, each its own step.
    fit(same_run(tmp_path / "small", short_text, "data.batch_size=2"))

    assert accumulated.accumulate_grad_batches == 2 and big.global_step == accumulated.global_step == STEPS
    assert big.lightning_module.tokens_seen == accumulated.lightning_module.tokens_seen == STEPS * 4 * CONTEXT
    reference = final_weights(tmp_path / "big")
    # Float32 sums in another order: a few ulps per gradient element, which 6 AdamW steps carry but do not grow.
    assert max_weight_diff(final_weights(tmp_path / "acc"), reference) < 1e-5
    assert max_weight_diff(final_weights(tmp_path / "small"), reference) > 1e-2


def test_accumulation_under_two_process_ddp_gives_the_update_of_one_big_batch(tmp_path, short_text):
    # 2 ranks x micro-batches of 1 x 2 accumulated = 4 windows a step: rank r reads windows r, r+2, ... so every
    # step covers the 4 windows one process reads in a batch of 4. Each rank has 11 windows an epoch, cut to 10.
    ddp_dir, out = run_train(
        tmp_path / "ddp", short_text, "trainer=ddp", "trainer.devices=2", "data.batch_size=1",
        f"trainer.tokens_per_step={4 * CONTEXT}", "trainer.limit_val_batches=0",
    )
    fit(same_run(tmp_path / "one", short_text, "data.batch_size=4"))
    assert read_checkpoint(ddp_dir / "checkpoints" / "last.ckpt")["global_step"] == STEPS, out[-2000:]
    one = final_weights(tmp_path / "one")
    ddp = read_checkpoint(ddp_dir / "checkpoints" / "last.ckpt")["state_dict"]
    # As in test_distributed: the all-reduce sums in another order (measured: 1e-5 at most in any weight).
    assert max_weight_diff(ddp, one) < 1e-3


def test_evaluation_schedules_count_optimizer_steps_not_micro_batches(tmp_path, short_text):
    # Lightning's validation loop every 2 optimizer steps, and the book's schedule after steps 1, 4, 7.
    trainer = fit(same_run(tmp_path / "a", short_text, "data.batch_size=2", f"trainer.tokens_per_step={4 * CONTEXT}",
                           "trainer.limit_val_batches=1", "trainer.val_check_interval=2"))
    assert [h["step"] for h in trainer.lightning_module.history] == [2, 4, 6]
    trainer = fit(same_run(tmp_path / "b", short_text, "data.batch_size=2", f"trainer.tokens_per_step={4 * CONTEXT}",
                           "+callbacks.book_schedule._target_=gptlit.book.schedule.BookSchedule",
                           "+callbacks.book_schedule.eval_freq=3", "+callbacks.book_schedule.eval_iter=1",
                           "trainer.max_steps=7"))
    assert [h["step"] for h in trainer.lightning_module.history] == [1, 4, 7]


def test_a_token_budget_ends_the_run_whatever_the_epochs(tmp_path, short_text):
    # 1000 tokens at 128 a step: 8 steps (the last one completes the budget), past the 5 steps of one epoch.
    cfg = same_run(tmp_path, short_text, "data.batch_size=2", f"trainer.tokens_per_step={4 * CONTEXT}",
                   "trainer.max_steps=-1", "trainer.max_epochs=1", "trainer.max_tokens=1e3")
    trainer = fit(cfg)
    # max_epochs=1 would have stopped after 10 batches (5 steps).
    assert trainer.global_step == 8 and trainer.num_training_batches == 10
    assert trainer.lightning_module.tokens_seen == 8 * 128 >= 1000


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.tokens_per_step=100"], r"not a multiple of .* 2 x 32 x 1 = 64; use a multiple of 64"),
        (["trainer.tokens_per_step=128", "+trainer.accumulate_grad_batches=4"], "contradicts"),
        (["trainer.max_tokens=1000", "trainer.max_steps=5"], "set one of them"),
        (["trainer.max_tokens=-5"], "trainer.max_tokens must be a positive integer"),
    ],
)
def test_token_settings_that_do_not_fit_are_refused(tmp_path, overrides, message):
    with pytest.raises(Exception) as raised:
        build(compose_train(tmp_path, *overrides))
    assert re.search(message, str(find_user_error(raised.value)))
