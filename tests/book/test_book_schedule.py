"""The book's evaluation schedule: once per optimizer step, before every other callback looks at the step."""

import signal

import lightning as L
import pytest
import torch

from gptlit.cli.build import build
from gptlit.training.callbacks import throughput as callbacks
from gptlit.training.callbacks.interrupt import TrainingInterrupted
from gptlit.training.module import GPTLitModule

from ..conftest import compose_train

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow

BOOK = ["+callbacks.book_schedule._target_=gptlit.book.schedule.BookSchedule", "+callbacks.book_schedule.eval_freq=2",
        "+callbacks.book_schedule.eval_iter=2", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
        "callbacks.export_weights=null", "callbacks.best_checkpoint=null"]


def run(run_dir, *overrides, extra_callbacks=(), ckpt_path=None):
    cfg = compose_train(run_dir, *BOOK, *overrides)
    datamodule, module, trainer = build(cfg)
    trainer.callbacks.extend(extra_callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module, trainer


def test_gradient_accumulation_evaluates_once_per_optimizer_step(tmp_path):
    module, trainer = run(tmp_path, "trainer.max_steps=5", "+trainer.accumulate_grad_batches=2")
    assert trainer.global_step == 5
    assert [h["step"] for h in module.history] == [1, 3, 5]


class SlowEvaluation:
    """A clock that reads 0.25 s later at every reading, and 100 s later after each evaluation batch."""

    def __init__(self, monkeypatch):
        self.now = 0.0
        monkeypatch.setattr(callbacks, "perf_counter", self.read)
        step = GPTLitModule.validation_step

        def slow_step(module, *args, **kwargs):
            self.now += 100.0
            return step(module, *args, **kwargs)

        monkeypatch.setattr(GPTLitModule, "validation_step", slow_step)

    def read(self):
        self.now += 0.25
        return self.now


def test_throughput_leaves_the_books_evaluations_out(tmp_path, monkeypatch):
    SlowEvaluation(monkeypatch)
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if "train/tokens_per_sec" in trainer.callback_metrics:
                seen.append(trainer.callback_metrics["train/tokens_per_sec"].item())

    module, trainer = run(tmp_path, "trainer.max_steps=7", "callbacks.throughput.window=2",
                          "callbacks.throughput.peak_flops=1e9", extra_callbacks=[Record()])
    assert [h["step"] for h in module.history] == [1, 3, 5, 7]
    # Each step reads the clock once (0.25 s): no interval may hold an evaluation's 200 s.
    assert seen and all(rate == pytest.approx(2 * 32 / 0.25) for rate in seen), seen


class InterruptAt(L.Callback):
    """Send this process SIGINT while the given optimizer step runs, as Ctrl-C would."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step + 1 == self.step:
            signal.raise_signal(signal.SIGINT)


def test_interrupt_exactly_at_an_evaluation_step_resumes_bit_for_bit(tmp_path):
    steps = ["trainer.max_steps=7"]
    straight, _ = run(tmp_path / "straight", *steps)
    assert [h["step"] for h in straight.history] == [1, 3, 5, 7]

    with pytest.raises(TrainingInterrupted) as stop:
        run(tmp_path / "cut", *steps, extra_callbacks=[InterruptAt(3)])
    assert stop.value.step == 3  # an evaluation step
    resumed, trainer = run(tmp_path / "cut", *steps, ckpt_path=stop.value.ckpt_path)
    assert trainer.global_step == 7
    assert resumed.history == straight.history
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
