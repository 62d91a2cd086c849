"""``checkpoints/last.ckpt``: everything a resume needs, rewritten at the end of every epoch.

Lightning's ``ModelCheckpoint(save_top_k=0, save_last=True)`` looks as if it does this, but in Lightning 2.6 its
``on_train_epoch_end`` writes ``last.ckpt`` only in the step in which it has just written a top-k checkpoint, and
with ``save_top_k=0`` it never does: ``last.ckpt`` appeared only when training ended, so a run killed after
hours (the OOM killer, a preempted node) had nothing to resume from but a ``best.ckpt`` that may be far behind.

This callback writes the file itself. Being a ``Checkpoint``, Lightning calls it after the module's and the
other callbacks' epoch-end hooks (the text sample has drawn its random numbers by then), so a resume from it
continues exactly where the uninterrupted run would. Epochs that last hours can add a cadence within the
epoch: every ``every_n_train_steps`` optimizer steps or every ``every_n_minutes`` minutes, each write replacing
the previous one (the disk holds one ``last.ckpt``, plus a second copy while it is being replaced).
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from gptlit.errors import UserError, check_int
from gptlit.training.callbacks.optimizer_step import AfterOptimizerStep


class LastCheckpoint(Checkpoint, AfterOptimizerStep):
    def __init__(
        self,
        dirpath: str | Path,
        filename: str = "last",
        every_n_train_steps: int | None = None,
        every_n_minutes: float | None = None,
    ):
        if every_n_train_steps is not None:
            check_int("callbacks.last_checkpoint.every_n_train_steps", every_n_train_steps,
                      what="a positive integer or null")
        if every_n_minutes is not None and not (
            isinstance(every_n_minutes, (int, float)) and not isinstance(every_n_minutes, bool) and every_n_minutes > 0
        ):
            raise UserError(f"callbacks.last_checkpoint.every_n_minutes must be a positive number or null, "
                            f"got {every_n_minutes!r}")
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.every_n_train_steps = every_n_train_steps
        self.every_n_minutes = every_n_minutes
        self._saved_step: int | None = None
        self._saved_time = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_time = time.monotonic()

    def on_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only right after an optimizer step: a batch that only accumulated gradients holds state no
        # checkpoint keeps.
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the last batch of an epoch is saved by on_train_epoch_end, once the epoch has ended
        due = bool(self.every_n_train_steps) and trainer.global_step % self.every_n_train_steps == 0
        if self.every_n_minutes is not None:
            # Clocks differ between ranks; rank 0 decides, or the ranks would wait for each other in the save.
            late = time.monotonic() - self._saved_time >= 60 * self.every_n_minutes
            due = due or trainer.strategy.broadcast(late)
        if due:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)  # max_steps may end training mid-epoch; a step already saved is not written again

    def save(self, trainer: L.Trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or self._saved_step == trainer.global_step:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step
        self._saved_time = time.monotonic()
