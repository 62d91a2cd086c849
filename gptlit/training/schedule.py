"""The learning-rate schedule of the book's appendix D: linear warmup, then cosine decay.

With ``s`` the 0-based optimizer step, ``W`` the warmup steps, ``T`` the run's optimizer steps, ``peak`` the
optimizer's configured rate, the rate of step ``s`` is

    initial + s * ((peak - initial) / W)                               for s < W
    min + (peak - min) * 0.5 * (1 + cos(pi * (s - W) / (T - W)))       otherwise

computed in that order of operations, as ``llms_from_scratch.appendix_d.train_model`` computes it, so the rates
are the book's to the last bit. The scheduler sets each rate outright rather than as a factor of the peak:
``peak * (rate / peak)`` would round differently.
"""

from __future__ import annotations

import math

import torch

from gptlit.errors import UserError, check_int


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int | None = None,
        warmup_fraction: float | None = None,
        initial_lr: float = 0.0,
        min_lr: float = 0.0,
        last_epoch: int = -1,
    ):
        """``warmup_steps`` wins when set; otherwise the warmup is ``int(warmup_fraction * total_steps)`` steps,
        the book's ``int(0.2 * total_steps)`` for a fraction of 0.2."""
        check_int("the run's number of optimizer steps", total_steps)
        if warmup_steps is not None:
            check_int("scheduler.warmup_steps", warmup_steps, minimum=0, what="a non-negative integer or null")
        elif warmup_fraction is None or not 0.0 <= warmup_fraction < 1.0:
            raise UserError(
                f"scheduler.warmup_fraction must be at least 0 and below 1 (or set scheduler.warmup_steps), got "
                f"{warmup_fraction!r}"
            )
        else:
            warmup_steps = int(warmup_fraction * total_steps)
        for key, value in (("initial_lr", initial_lr), ("min_lr", min_lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"scheduler.{key} must be a non-negative number, got {value!r}")
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.initial_lr = initial_lr
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def rate(self, step: int, peak: float) -> float:
        if step < self.warmup_steps:
            return self.initial_lr + step * ((peak - self.initial_lr) / self.warmup_steps)
        # Past the planned end (a resumed run given more steps) the rate stays at min_lr; T - W is never 0
        # inside a run, only in the step() Lightning calls after its last optimizer step.
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        return self.min_lr + (peak - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [self.rate(self.last_epoch, peak) for peak in self.base_lrs]
