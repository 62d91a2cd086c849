"""The bare weights at the end of training: model.safetensors and the book's model.pth."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from gptlit.training.full_model import full_model
from gptlit.training.module import GPTLitModule
from gptlit.weights.io import save_book_pth, save_safetensors


class ExportWeights(L.Callback):
    """Write the bare model weights when training ends: ``model.safetensors`` (with its config) and
    ``model.pth``, a state dict the book's own ``GPTModel`` loads (section 5.4).

    Every rank takes part (sharded weights are gathered collectively); global rank zero writes."""

    def __init__(self, dirpath: str | Path, safetensors: bool = True, pth: bool = True):
        self.dirpath = Path(dirpath)
        self.safetensors = safetensors
        self.pth = pth

    def on_train_end(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        # Training is over: the gradients are no longer needed, and freeing them first keeps the export (which
        # holds a copy of the weights while writing) within the training step's peak memory.
        pl_module.zero_grad(set_to_none=True)
        model = full_model(trainer, pl_module)
        if model is None:
            return
        if self.safetensors:
            save_safetensors(model, self.dirpath / "model.safetensors")
        if self.pth:
            save_book_pth(model, self.dirpath / "model.pth")
