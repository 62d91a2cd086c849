"""Callbacks that tests put into real training runs, as objects or by name (`_target_`)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class ModelBuildProbe(L.Callback):
    """Writes, per rank, to ``dirpath/build-rank<N>.json``: the device the module's weights were built on (before
    the strategy set the model up) and the elements of the weights this rank holds once training starts."""

    def __init__(self, dirpath: str):
        self.path, self.facts = Path(dirpath), {}

    def setup(self, trainer, pl_module, stage) -> None:
        self.facts["built_on"] = next(pl_module.model.parameters()).device.type

    def on_train_start(self, trainer, pl_module) -> None:
        local = [getattr(p, "to_local", lambda: p)() for p in pl_module.model.parameters()]
        self.facts["held"] = sum(t.numel() for t in local)
        self.facts["whole"] = sum(p.numel() for p in pl_module.model.parameters())

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"build-rank{trainer.global_rank}.json").write_text(json.dumps(self.facts))


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
    """Write, per rank, a checksum of its weights after every optimizer step to ``dirpath/weights-rank<N>.json``."""

    def __init__(self, dirpath: str):
        self.path = Path(dirpath)
        self.sums: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        with torch.no_grad():
            # This rank's part of the weights: all of them under DDP, its shard under FSDP.
            local = (getattr(p, "to_local", lambda: p)() for p in pl_module.model.parameters())
            self.sums[trainer.global_step] = sum(t.double().sum().item() for t in local)

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
