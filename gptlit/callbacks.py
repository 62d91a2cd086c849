"""Callbacks of a training run: a text sample after each epoch and the loss plot at the end."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from gptlit.generation import DecodingConfig, generate
from gptlit.module import GPTLitModule
from gptlit.plot import plot_losses
from gptlit.tokenizer import text_to_token_ids, token_ids_to_text
from gptlit.weights import save_book_pth, save_safetensors


class SampleText(L.Callback):
    """Generate from ``start_context`` after every epoch, print it on one line and log it to TensorBoard."""

    def __init__(
        self,
        start_context: str = "Every effort moves you",
        max_new_tokens: int = 50,
        decoding: DecodingConfig | None = None,
        seed: int = 123,
    ):
        self.start_context = start_context
        self.max_new_tokens = max_new_tokens
        self.decoding = decoding or DecodingConfig()
        # Sampling draws from a generator of its own so the decoding settings never change the training run.
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, pl_module: GPTLitModule) -> str:
        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            idx = text_to_token_ids(self.start_context).to(pl_module.device)
            out = generate(
                model,
                idx,
                self.max_new_tokens,
                context_size=model.cfg.context_length,
                temperature=self.decoding.temperature,
                top_k=self.decoding.top_k,
                top_p=self.decoding.top_p,
                eos_id=self.decoding.eos_id,
                generator=self.generator if idx.device.type == "cpu" else None,
            )
        finally:
            model.train(was_training)
        return token_ids_to_text(out.cpu())

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        text = self.sample(pl_module)
        pl_module.print(text.replace("\n", " "))
        if isinstance(trainer.logger, TensorBoardLogger):
            trainer.logger.experiment.add_text("sample", text, trainer.global_step)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "generator" in state_dict:
            self.generator.set_state(state_dict["generator"])


class ExportWeights(L.Callback):
    """Write the bare model weights when training ends: ``model.safetensors`` (with its config) and
    ``model.pth``, a state dict the book's own ``GPTModel`` loads (section 5.4)."""

    def __init__(self, dirpath: str | Path, safetensors: bool = True, pth: bool = True):
        self.dirpath = Path(dirpath)
        self.safetensors = safetensors
        self.pth = pth

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        if self.safetensors:
            save_safetensors(pl_module.model, self.dirpath / "model.safetensors")
        if self.pth:
            save_book_pth(pl_module.model, self.dirpath / "model.pth")


class LossPlot(L.Callback):
    """Save the book's loss plot (PNG and PDF) from the evaluations of the run when training ends."""

    def __init__(self, dirpath: str | Path, filename: str = "loss-plot"):
        self.dirpath = Path(dirpath)
        self.filename = filename

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        history = pl_module.history
        if not history:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        plot_losses(
            [h["epoch"] for h in history],
            [h["tokens_seen"] for h in history],
            [h["train_loss"] for h in history],
            [h["val_loss"] for h in history],
            self.dirpath / self.filename,
        )


class ProgressBar(TQDMProgressBar):
    """Lightning's bar without the evaluation bars, so the book's evaluation lines read as a table."""

    def init_validation_tqdm(self):
        bar = super().init_validation_tqdm()
        bar.disable = True
        return bar
