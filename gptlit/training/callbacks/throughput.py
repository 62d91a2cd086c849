"""Training tokens/s and model FLOPs utilisation, in the progress bar and the logger."""

from __future__ import annotations

from collections import deque
from time import perf_counter

import lightning as L

from gptlit.core.device import precision_dtype
from gptlit.planning.flops import step_peak_flops, training_flops_per_token
from gptlit.training.module import GPTLitModule


class Throughput(L.Callback):
    """Training tokens/s and model FLOPs utilisation over the last ``window`` steps, in the bar and the logger.

    A step is timed from the end of one training batch to the end of the next, so it includes data loading and
    every hook; intervals holding an evaluation or an epoch's end are left out. MFU divides the model FLOPs of
    those tokens (gptlit.planning.flops) by ``peak_flops``, by default the rate the training device runs the step's
    own matmuls at in the precision's dtype, measured when fit starts: plan.py's definition
    (gptlit.planning.flops.step_peak_flops). Only host clocks are read: no device sync is added.
    """

    def __init__(self, window: int = 20, peak_flops: float | None = None):
        self.window = window
        self.peak_flops = peak_flops
        self._steps: deque[tuple[float, int]] = deque(maxlen=window)
        self._last: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        if self.peak_flops is None:
            dtype = precision_dtype(trainer.precision)
            micro_batch = getattr(trainer.datamodule, "batch_size", 1)
            tokens = micro_batch * getattr(trainer.datamodule, "context_length", pl_module.config.context_length)
            self.peak_flops = step_peak_flops(pl_module.config, tokens, pl_module.device, dtype)

    def on_train_batch_end(self, trainer, pl_module: GPTLitModule, outputs, batch, batch_idx: int) -> None:
        now = perf_counter()
        inputs = batch[0]
        if self._last is not None:
            self._steps.append((now - self._last, inputs.numel() * trainer.world_size))
        self._last = now
        if not self._steps:
            return
        seconds = sum(s for s, _ in self._steps)
        tokens_per_sec = sum(n for _, n in self._steps) / seconds
        mfu = tokens_per_sec * training_flops_per_token(pl_module.config, inputs.shape[1]) / self.peak_flops
        pl_module.log_dict(
            {"train/tokens_per_sec": tokens_per_sec, "train/mfu": mfu},
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )

    def _interrupt(self, *args) -> None:
        self._last = None

    # Lightning's validation loop and gptlit.book.BookSchedule both announce an evaluation with this hook.
    on_validation_epoch_start = on_train_epoch_end = on_train_epoch_start = _interrupt
