"""HellaSwag during training: every N optimizer steps (once a step, however many batches it accumulated), logged
as ``eval/hellaswag`` (acc_norm) and ``eval/hellaswag_acc``, and printed on one line. Enabled by
``callbacks=hellaswag`` (conf/callbacks/hellaswag.yaml)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from gptlit.core.tokenizer import load_tokenizer
from gptlit.errors import check_int
from gptlit.evaluation import hellaswag
from gptlit.training.callbacks.optimizer_step import AfterOptimizerStep
from gptlit.training.fsdp import shards_weights


class HellaSwagEval(AfterOptimizerStep):
    def __init__(
        self,
        every_n_steps: int = 500,
        path: str | Path | None = None,
        cache_dir: str | Path = "data/hellaswag",
        url: str = hellaswag.VAL_URL,
        limit: int | None = None,
        batch_size: int = 4,
    ):
        """``path``/``cache_dir``/``url``/``limit``/``batch_size`` are eval.py's task.* settings for hellaswag."""
        check_int("callbacks.hellaswag.every_n_steps", every_n_steps)
        check_int("callbacks.hellaswag.batch_size", batch_size)
        self.every_n_steps = every_n_steps
        self.source = (path, cache_dir, url)
        self.limit = limit
        self.batch_size = batch_size
        self.items: list | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Read (downloading once) before training starts, so a missing file stops the run at once.
        if self.items is None:
            if trainer.is_global_zero:
                self.items = hellaswag.read_items(hellaswag.locate(*self.source), self.limit)
            if shards_weights(trainer):
                self.items = trainer.strategy.broadcast(self.items)  # read once, scored by every rank

    def on_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        # Rank zero scores; where the weights are sharded every rank runs the same forward passes with it.
        if step % self.every_n_steps or not self.items or not (trainer.is_global_zero or shards_weights(trainer)):
            return
        model = pl_module.model
        was_training = model.training
        try:
            # The training precision (autocast for mixed ones); scoring draws no random numbers.
            with trainer.precision_plugin.forward_context():
                result = hellaswag.hellaswag(model, self.items, self.batch_size, precision=None, progress=False,
                                             tokenizer=load_tokenizer(getattr(pl_module, "tokenizer_path", None)))
        finally:
            model.train(was_training)
        if not trainer.is_global_zero:
            return
        if trainer.logger:
            trainer.logger.log_metrics({"eval/hellaswag": result["acc_norm"], "eval/hellaswag_acc": result["acc"]}, step)
        pl_module.print(f"HellaSwag at step {step}: acc_norm {result['acc_norm']:.4f}, acc {result['acc']:.4f} "
                        f"on {result['items']} items")
