"""What a NaN or infinite training loss does: stop the run, or skip the batch without an optimizer step.

Two constraints shape this. Under DDP every rank must make the same choice: a rank that skips its backward pass
leaves the others waiting in the gradient all-reduce. So the per-step flag "some rank's loss is not finite" is
all-reduced (MAX) on the device, and every rank acts on the same value. And on a GPU, reading a tensor on the
host (``bool()``, ``.item()``) waits for every queued kernel; doing it between the forward and the backward
pass every step would stall the GPU. So the flag never reaches the host on the hot path:

- the update is skipped on the device: fused optimizers (``optimizer.fused=true``, the default) take a
  ``found_inf`` tensor, the one GradScaler hands them, and leave weights and state untouched where it is 1.
  Optimizers without that kernel (the book's foreach AdamW) read the flag on the host, one sync per step, and
  drop the gradients of a bad step, which every torch optimizer then skips;
- the flags of past steps are read in one batch: after every step on the CPU (where reading a tensor costs
  nothing, so the message comes at the step itself), every ``CHECK_EVERY`` steps elsewhere, and always before
  a checkpoint is written and at the end of each epoch. "stop" then raises for the first bad step, "skip" prints
  one warning per skipped step. A bad update is never applied, so whatever is written in between is sound.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from gptlit.errors import UserError

POLICIES = ("stop", "skip")
# Steps between two host reads of the flags on a GPU: one wait per CHECK_EVERY steps instead of one per step.
CHECK_EVERY = 50


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


class NonFiniteGuard:
    def __init__(self, policy: str = "stop"):
        if policy not in POLICIES:
            raise UserError(f"module.on_nonfinite must be stop or skip, got {policy!r}")
        self.policy = policy
        self._step_flag: torch.Tensor | None = None
        # (where, flag, loss, tokens) of each batch whose flag has not been read on the host yet.
        self._pending: list[tuple[str, torch.Tensor, torch.Tensor, int]] = []

    def watch(self, loss: torch.Tensor, where: str, tokens: int) -> None:
        """Note a training batch's loss; ``where`` names the batch in messages, ``tokens`` counts its tokens."""
        loss = loss.detach()
        flag = (~torch.isfinite(loss)).to(torch.float32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # queued on the device; no barrier, no host wait
        # Accumulated batches share one optimizer step: one bad batch spoils the step.
        self._step_flag = flag if self._step_flag is None else torch.maximum(self._step_flag, flag)
        self._pending.append((where, flag, loss, tokens))

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        flag, self._step_flag = self._step_flag, None
        if flag is None:
            return
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            optimizer.found_inf = flag
        elif flag.item():
            optimizer.zero_grad(set_to_none=True)

    @staticmethod
    def after_optimizer_step(optimizer: torch.optim.Optimizer) -> None:
        optimizer.__dict__.pop("found_inf", None)

    def due(self, device: torch.device) -> bool:
        return device.type == "cpu" or len(self._pending) >= CHECK_EVERY

    def check(self, warn: Callable[[str], None]) -> int:
        """Read the pending flags on the host: raise NonFiniteLossError ("stop") or ``warn`` about each skipped
        batch ("skip"). Returns the tokens of the skipped batches."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, []
        flags = torch.stack([flag for _, flag, _, _ in pending]).tolist()  # the one host read
        skipped = 0
        for (where, _, loss, tokens), bad in zip(pending, flags):
            if not bad:
                continue
            value = loss.item()
            what = f"training loss is {value}" if not torch.isfinite(torch.tensor(value)) else (
                "training loss of another process is not finite")
            if self.policy == "stop":
                raise NonFiniteLossError(
                    f"{what} {where}; the run stopped and the checkpoints written so far are kept. "
                    "Lower optimizer.lr, or set module.on_nonfinite=skip to skip such batches"
                )
            warn(f"warning: {what} {where}; batch skipped")
            skipped += tokens
        return skipped
