"""The one rule for a callback that acts after an optimizer step, not after every batch.

Lightning calls ``on_train_batch_end`` after every micro-batch: with gradient accumulation most of them only
added gradients, and a batch whose step was skipped (a non-finite loss, gptlit.training.nonfinite) stepped
nothing. A step happened exactly when ``trainer.global_step`` moved during the batch. Lightning's
``on_before_optimizer_step`` comes before the update, when the weights, the schedule and the step count are
still the old ones, so it cannot serve: a checkpoint or an evaluation there would hold the step half done.
"""

from __future__ import annotations

import lightning as L


class AfterOptimizerStep(L.Callback):
    """Subclasses implement ``on_optimizer_step``; it runs once per optimizer step, right after it, on every rank
    (``trainer.global_step`` is the number of steps taken, the one just taken included)."""

    _step_before_batch: int | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._step_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self._step_before_batch is not None and trainer.global_step != self._step_before_batch:
            self.on_optimizer_step(trainer, pl_module)

    def on_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise NotImplementedError
