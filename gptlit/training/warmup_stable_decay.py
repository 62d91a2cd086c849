"""Warmup, a long stable phase, then a linear decay: the schedule of the GPT-2 speedrun and nanochat.

With ``s`` the 0-based optimizer step, ``W`` the warmup steps, ``T`` the run's optimizer steps, ``D`` the decay
steps (``int(decay_fraction * T)``) and ``peak`` a group's configured rate, the rate of step ``s`` is

    min(peak, initial + (peak - initial) * s / W, min + (peak - min) * (T - s) / D)

that is a linear warmup for s < W, the peak, and a linear decay from step T - D down to min at the end; a run
too short for both (W + D > T) takes whichever ramp is lower, so a short run (or the one-step check of the
settings when a run is built) needs no special case.

Unlike a cosine, the rate stays at its peak for most of the run and falls only at the end, which is where most of
the loss is gained; and a run may be extended from any checkpoint of its stable phase by decaying later. Each
parameter group decays from its own peak (Muon's matrices and AdamW's other parameters have their own).
"""

from __future__ import annotations

import torch

from gptlit.errors import UserError, check_int


class WarmupStableDecay(torch.optim.lr_scheduler.LRScheduler):
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        decay_fraction: float = 0.4,
        initial_lr: float = 0.0,
        min_lr: float = 0.0,
        last_epoch: int = -1,
    ):
        check_int("the run's number of optimizer steps", total_steps)
        check_int("scheduler.warmup_steps", warmup_steps, minimum=0, what="a non-negative integer")
        if isinstance(decay_fraction, bool) or not isinstance(decay_fraction, (int, float)) or not 0 <= decay_fraction <= 1:
            raise UserError(f"scheduler.decay_fraction must be between 0 and 1, got {decay_fraction!r}")
        for key, value in (("initial_lr", initial_lr), ("min_lr", min_lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"scheduler.{key} must be a non-negative number, got {value!r}")
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.decay_steps = int(decay_fraction * total_steps)
        self.initial_lr = initial_lr
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def rate(self, step: int, peak: float) -> float:
        rate = peak
        if step < self.warmup_steps:
            rate = min(rate, self.initial_lr + (peak - self.initial_lr) * step / self.warmup_steps)
        if step >= self.total_steps - self.decay_steps:
            # Past the planned end (a resumed run given more steps) the rate stays at min_lr.
            remaining = max(self.total_steps - step, 0)
            decayed = self.min_lr + (peak - self.min_lr) * remaining / self.decay_steps if self.decay_steps else self.min_lr
            rate = min(rate, decayed)
        return rate

    def get_lr(self) -> list[float]:
        return [self.rate(self.last_epoch, peak) for peak in self.base_lrs]
