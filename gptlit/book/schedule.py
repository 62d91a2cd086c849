"""The book's evaluation schedule and its printed step numbers.

``conf/experiment/book_ch5.yaml`` reproduces chapter 5's ``train_model_simple`` line for line through
``BookSchedule``. What the book's numbers also depend on lives in the shared code it is an option of, marked
there with a pointer back to this file (moving it here would make the model and the data import upward):

- ``gptlit/core/model.py``: ``kernels="book"``, the book's explicit masked softmax, whose dropout draws random
  numbers as the book's does (fused attention's dropout does not), and its written-out LayerNorm and GELU, which
  round as the book's do (the fused kernels differ by about 1e-7 a step, enough to move appendix D's third
  decimal after 40 steps);
- ``gptlit/data/text.py``: ``val_dataloader`` returns the train split first, shuffled, as the book's
  ``evaluate_model`` reads it, and ``ResumableRandomSampler`` shuffles with RandomSampler's random draws.
"""

from __future__ import annotations

import lightning as L
import torch

from gptlit.errors import check_int
from gptlit.console import show
from gptlit.training.callbacks.optimizer_step import AfterOptimizerStep
from gptlit.training.module import GPTLitModule, evaluation_line


class BookSchedule(AfterOptimizerStep):
    """Evaluate as the book's training loops do instead of through Lightning's validation loop.

    After optimizer steps 1, 1 + ``eval_freq``, 1 + 2 ``eval_freq``, ... the model is evaluated on ``eval_iter``
    batches of each split (the book's ``evaluate_model``, drawing from the random generator exactly as it does)
    and one line is printed with the book's 0-based step number: ``Ep 1 (Step 000000): Train loss ...`` in
    chapter 5, ``Ep 1 (Iter 000000): ...`` with ``label="Iter"`` in appendix D. Lightning's own loop counts
    batches from the ``eval_freq``-th, so it cannot start at step 1; set ``trainer.limit_val_batches=0`` so that
    it does not evaluate too.

    The schedule is keyed on optimizer steps (gptlit.training.callbacks.optimizer_step): a step evaluates once,
    whether it took several accumulated batches, and a skipped batch evaluates nothing. Lightning calls the
    callbacks' ``on_train_batch_end`` in list order, before the
    module's; this callback puts itself first, so that every other callback sees the step with its evaluation
    done: a checkpoint (GracefulInterrupt's included) holds the evaluation and its random draws, and Throughput
    hears of it (``on_validation_epoch_start``/``_end``, as for Lightning's own evaluations) and leaves it out.
    """

    def __init__(self, eval_freq: int = 5, eval_iter: int = 5, label: str = "Step"):
        check_int("callbacks.book_schedule.eval_freq", eval_freq)
        check_int("callbacks.book_schedule.eval_iter", eval_iter)
        self.eval_freq = eval_freq
        self.eval_iter = eval_iter
        self.label = label

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning iterates trainer.callbacks by index while calling setup; moving this callback from index i to
        # the front leaves every index after i where it was, so no other callback is skipped or called twice.
        trainer.callbacks.remove(self)
        trainer.callbacks.insert(0, self)

    def on_optimizer_step(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        if (trainer.global_step - 1) % self.eval_freq == 0:
            self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        """The book's evaluate_model through the module's validation hooks: one fresh iterator per loader,
        train split first, in eval mode."""
        others = [c for c in trainer.callbacks if c is not self]
        for callback in others:
            callback.on_validation_epoch_start(trainer, pl_module)
        pl_module.model.eval()
        pl_module.on_validation_epoch_start()
        for dataloader_idx, loader in enumerate(trainer.datamodule.val_dataloader()):
            for batch_idx, (inputs, targets) in zip(range(self.eval_iter), loader):
                batch = (inputs.to(pl_module.device), targets.to(pl_module.device))
                pl_module.validation_step(batch, batch_idx, dataloader_idx)
        train_loss, val_loss = pl_module.record_evaluation()
        pl_module.model.train()
        # The book counts optimizer steps from 0.
        step = trainer.global_step - 1
        show(evaluation_line(trainer.current_epoch + 1, self.label, step, train_loss, val_loss), pl_module)
        for callback in others:
            callback.on_validation_epoch_end(trainer, pl_module)
