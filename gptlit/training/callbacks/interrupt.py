"""Ctrl-C or SIGTERM during training: finish the step, write a resumable checkpoint, say how to resume; with
several processes, every rank stops after the same step."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path

import lightning as L
import torch

from gptlit.files import human_bytes
from gptlit.training.callbacks.optimizer_step import AfterOptimizerStep
from gptlit.weights.io import tensor_bytes


class TrainingInterrupted(Exception):
    def __init__(self, signum: int, step: int, ckpt_path: Path):
        self.signum, self.step, self.ckpt_path = signum, step, ckpt_path
        super().__init__(f"{signal.Signals(signum).name} at step {step}; checkpoint {ckpt_path}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by that signal


class GracefulInterrupt(AfterOptimizerStep):
    """Turn SIGINT and SIGTERM into a clean stop at the next step boundary.

    Stopping mid-step could leave the weights half-updated, or drop gradients accumulated over several batches;
    here the optimizer step in flight finishes (all its batches), the checkpoint is
    written (atomically, by the trainer's checkpoint I/O) and the run ends with TrainingInterrupted. A second
    Ctrl-C stops at once. At the last batch of an epoch the stop waits one more step, because a checkpoint
    taken mid-epoch is what resumes bit for bit (see TextDataModule.state_dict).
    """

    def __init__(self, dirpath: str | Path, filename: str = "last"):
        self.ckpt_path = Path(dirpath) / f"{filename}.ckpt"
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _request(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this step ...", file=sys.stderr, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        # On every rank, in place of Lightning's own SIGTERM handler (which kills the other ranks at once): a
        # cluster signals every process, a user's `kill` perhaps one; the ranks agree on the stop below.
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._request)

    def on_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the same batch on every rank: none of them asks the others below
        signum = self.requested or 0
        if trainer.world_size > 1:
            # Every rank stops after the same optimizer step, as soon as any rank was signalled, and all take
            # part in the one checkpoint (under FSDP its state is gathered from every rank); each exits as the
            # signalled one does. One small all-reduce a step.
            from torch.distributed import ReduceOp  # here: a torch built without distributed runs one process

            signum = int(trainer.strategy.reduce(torch.tensor(signum, device=pl_module.device), reduce_op=ReduceOp.MAX))
        if not signum:
            return
        # The step is trained: hand its metrics to the loggers as Lightning would right after this hook, which
        # the stop skips, so TensorBoard's curves have no gap where the run resumes. (Private to Lightning.)
        trainer._logger_connector.on_batch_end()
        trainer._logger_connector.update_train_step_metrics()
        for logger in trainer.loggers:
            logger.save()
        # Several GB for large models: say so before the wait, and that a second Ctrl-C keeps the old file.
        size = tensor_bytes([pl_module.state_dict(), *(o.state_dict() for o in trainer.optimizers)])
        if trainer.is_global_zero:
            print(f"writing {self.ckpt_path} (about {human_bytes(size)}); Ctrl-C again stops at once and keeps the "
                  "previous checkpoint ...", file=sys.stderr, flush=True)
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        raise TrainingInterrupted(signum, trainer.global_step, self.ckpt_path)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def python_command() -> str:
    """How to call the Python running this: ``python`` where that is it, else its path (``.venv/bin/python`` for a
    user who came in through ``make`` without activating the environment)."""
    on_path = shutil.which("python")
    if on_path and os.path.abspath(on_path) == os.path.abspath(sys.executable):
        return "python"
    executable = os.path.abspath(sys.executable)  # not resolved: a virtual environment's python is a link
    relative = os.path.relpath(executable)
    return executable if relative.startswith("..") else relative


def resume_command(script: str, overrides: list[str], ckpt_path: Path, run_dir: Path) -> str:
    """The command line that continues this run: the same overrides, from the checkpoint, in the same directory."""
    kept = [o for o in overrides if not o.lstrip("+").startswith(("ckpt_path=", "hydra.run.dir="))]
    args = [python_command(), script, *kept, f"ckpt_path={ckpt_path.resolve()}", f"hydra.run.dir={run_dir.resolve()}"]
    return " ".join(shlex.quote(a) for a in args)
