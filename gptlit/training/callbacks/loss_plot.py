"""The book's loss plot (section 5.2): train and val loss against epochs, with tokens seen on a second axis."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gptlit.files import atomic_write
from gptlit.training.module import GPTLitModule


def plot_losses(
    epochs_seen: Sequence[float],
    tokens_seen: Sequence[float],
    train_losses: Sequence[float],
    val_losses: Sequence[float],
    out_stem: str | Path,
) -> list[Path]:
    """Write ``<out_stem>.png`` and ``<out_stem>.pdf``; each appears whole or not at all."""
    # A bare Figure needs no GUI backend, so this works on headless machines and in worker threads.
    fig = Figure(figsize=(5, 3))
    ax1 = fig.add_subplot()
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax1.twiny()
    ax2.plot(tokens_seen, train_losses, alpha=0)  # invisible: only aligns the tokens-seen ticks
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    written = []
    for suffix in (".png", ".pdf"):
        path = Path(str(out_stem) + suffix)
        with atomic_write(path) as f:
            fig.savefig(f, format=suffix[1:])
        written.append(path)
    return written


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
        plot_losses(
            [h["epoch"] for h in history],
            [h["tokens_seen"] for h in history],
            [h["train_loss"] for h in history],
            [h["val_loss"] for h in history],
            self.dirpath / self.filename,
        )
