"""Callbacks and a strategy that tests put into real training runs, as objects or by name (`_target_`)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy

from gptlit.core.model import TransformerBlock


class ShardedLikeFSDP(DDPStrategy):
    """DDP on gloo with FSDP's two collective demands, so a CPU run shows what would hang under FSDP on GPUs.

    Each transformer block's forward waits for every rank (FSDP gathers the block's shards there), and the full
    state dict is gathered collectively into copies on rank zero, the others getting nothing (FSDP's full
    state dict). A rank that runs either alone leaves the others waiting; the timeout turns that into an error.
    """

    def __init__(self, **kwargs):
        super().__init__(timeout=timedelta(seconds=60), **kwargs)

    def setup(self, trainer: L.Trainer) -> None:
        super().setup(trainer)
        for module in self.lightning_module.modules():
            if isinstance(module, TransformerBlock):
                module.register_forward_pre_hook(lambda *args: dist.barrier())

    def lightning_module_state_dict(self) -> dict[str, torch.Tensor]:
        dist.barrier()
        state = super().lightning_module_state_dict()
        return {k: v.detach().clone() for k, v in state.items()} if self.global_rank == 0 else {}


class NonFiniteLoss(L.Callback):
    """Make the logits non-finite (times ``value``) while one optimizer step runs, on one rank or on all; note the
    weights before and after that step."""

    def __init__(self, step: int, rank: int | None = None, value: float = float("nan")):
        self.step, self.rank, self.value = step, rank, value
        self.before = self.after = self._handle = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step and self.rank in (None, trainer.global_rank):
            self.before = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
            self._handle = pl_module.model.register_forward_hook(lambda module, args, out: out * self.value)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            self.after = {k: v.clone() for k, v in pl_module.model.state_dict().items()}


class RecordWeights(L.Callback):
    """Write, per rank, a checksum of the weights after every optimizer step to ``dirpath/weights-rank<N>.json``."""

    def __init__(self, dirpath: str):
        self.path = Path(dirpath)
        self.sums: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        with torch.no_grad():
            self.sums[trainer.global_step] = sum(p.double().sum().item() for p in pl_module.model.parameters())

    def on_train_end(self, trainer, pl_module) -> None:
        (self.path / f"weights-rank{trainer.global_rank}.json").write_text(json.dumps(self.sums))


class RngStateProbe(L.Callback):
    """Writes a digest of this rank's torch generator state before every training batch, to
    ``{dirpath}/rng-rank{rank}.json``: the state, not a draw, so the run's random numbers stay its own."""

    def __init__(self, dirpath: str):
        self.path, self.digests = Path(dirpath), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import hashlib

        self.digests.append(hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest())

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"rng-rank{trainer.global_rank}.json").write_text(json.dumps(self.digests))


class SignalAtStep(L.Callback):
    """Sends ``signum`` to this very process after optimizer step ``step`` on rank ``rank``: a real signal, at a
    known step, to one rank of a multi-process run."""

    def __init__(self, step: int, rank: int = 0, signum: str = "SIGTERM"):
        self.step, self.rank, self.signum = step, rank, signum

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        import os
        import signal

        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), getattr(signal, self.signum))
