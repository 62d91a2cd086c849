"""Training of ``GPTModel`` with Lightning: the book's ``train_model_simple`` as a LightningModule."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger

from gptlit.model import GPTConfig, GPTModel
from gptlit.weights import init_model

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood over every position of the batch (the book's calc_loss_batch)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class GPTLitModule(L.LightningModule):
    """Trains a GPTModel; every evaluation estimates train and val loss in eval mode, like the book.

    Validation runs two loaders (see TextDataModule.val_dataloader): 0 is the val split, 1 the train split.
    Each loss is the unweighted mean of per-batch mean losses, the book's calc_loss_loader.
    """

    def __init__(
        self,
        model: GPTConfig | Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        init_from: str | None = None,
    ):
        """``init_from`` starts from the weights of a file or a GPT-2 name (see gptlit.weights.init_model)."""
        super().__init__()
        config = GPTConfig.from_any(model)
        self.model = init_model(config, init_from) if init_from else GPTModel(config)
        # Plain types only, so checkpoints load with torch.load(weights_only=True) and carry the model config
        # (the model's: init_from may have set qkv_bias).
        self.save_hyperparameters({"model": self.model.cfg.to_dict()})
        self.optimizer_factory = optimizer
        self.tokens_seen = 0
        # The book's (train_losses, val_losses, track_tokens_seen) with the step and epoch of each evaluation.
        self.history: list[dict[str, float]] = []
        self._eval_sums = torch.zeros(2, 2, dtype=torch.float64)

    @property
    def config(self) -> GPTConfig:
        return self.model.cfg

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            return torch.optim.AdamW(self.parameters(), lr=4e-4, weight_decay=0.1)
        return self.optimizer_factory(self.parameters())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = cross_entropy(self.model(inputs), targets)
        self.tokens_seen += inputs.numel() * self.trainer.world_size
        self.log("train/batch_loss", loss, prog_bar=True, batch_size=inputs.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._eval_sums = torch.zeros(2, 2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0):
        inputs, targets = batch
        loss = cross_entropy(self.model(inputs), targets)
        self._eval_sums[dataloader_idx] += torch.stack([loss.detach().double(), loss.new_ones((), dtype=torch.float64)])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        sums = self.trainer.strategy.reduce(self._eval_sums, reduce_op="sum")
        val_loss, train_loss = (sums[:, 0] / sums[:, 1]).tolist()
        metrics = {
            "val/loss": val_loss,
            "train/loss": train_loss,
            "val/perplexity": math.exp(min(val_loss, 700.0)),
            "tokens_seen": float(self.tokens_seen),
        }
        self.log_dict(metrics, batch_size=1)
        epoch, step = self.current_epoch + 1, self.global_step
        self.history.append(
            {
                "step": step,
                "epoch": step / max(self.trainer.num_training_batches, 1),
                "tokens_seen": self.tokens_seen,
                "train_loss": train_loss,
                "val_loss": val_loss,
            }
        )
        self.print(f"Ep {epoch} (Step {step:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")

    def on_fit_start(self) -> None:
        if isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
            # TensorBoard draws tags in separate charts; a custom layout overlays train and val loss in one.
            self.logger.experiment.add_custom_scalars(
                {"loss": {"train vs val": ["Multiline", ["train/loss", "val/loss"]]}}
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self.history = list(checkpoint.get("history", []))
