"""One progress bar for the whole run, in optimizer steps."""

from __future__ import annotations

import math
import sys

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from tqdm import tqdm

from gptlit.training.module import GPTLitModule


class ProgressBar(TQDMProgressBar):
    """One bar for the whole run, in optimizer steps, without the evaluation bars (so the book's evaluation lines
    read as a table).

    Its total is the run's last step (max_steps, the epochs, or the token budget), so the time estimate covers
    the whole run; its description counts epochs from 1, as the evaluation lines do; a run resumed mid-epoch
    starts at the step it resumed from and estimates from the steps of this session only. With a token budget
    (trainer.max_tokens) it shows the tokens done against the budget.
    """

    def init_validation_tqdm(self):
        bar = super().init_validation_tqdm()
        bar.disable = True
        return bar

    def on_train_start(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        total = trainer.estimated_stepping_batches
        # tqdm's rate counts from `initial`: a resumed run's estimate rests on its own steps only.
        self.train_progress_bar = Tqdm(
            desc=self.describe(trainer),
            total=int(total) if math.isfinite(total) else None,
            initial=trainer.global_step,
            unit="step",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    @staticmethod
    def describe(trainer: L.Trainer) -> str:
        epochs = trainer.max_epochs
        budget = getattr(trainer, "max_tokens", None)
        of = f"/{epochs}" if epochs is not None and epochs > 0 and not budget else ""
        return f"Epoch {trainer.current_epoch + 1}{of}"

    def on_train_epoch_start(self, trainer: L.Trainer, *_) -> None:
        self.train_progress_bar.set_description(self.describe(trainer), refresh=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: GPTLitModule, outputs, batch, batch_idx: int) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        # Accumulating batches leave the step where it was: nothing to redraw.
        if bar.disable or step == bar.n or (step % self.refresh_rate and step != bar.total):
            return
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        budget = getattr(trainer, "max_tokens", None)
        if budget:
            done = getattr(pl_module, "tokens_seen", trainer.global_step * trainer.tokens_per_step)
            metrics = {"tokens": f"{count(done)}/{count(budget)}", **metrics}
        return metrics


def count(n: int) -> str:
    """1234567 as 1.23M, 500 as 500."""
    return str(int(n)) if n < 1000 else tqdm.format_sizeof(n)
