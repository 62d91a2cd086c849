"""Callbacks of a training run: a text sample after each epoch, the loss plot at the end, throughput."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from time import perf_counter

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from gptlit.core.generation import DecodingConfig, generate
from gptlit.training.console import show
from gptlit.training.module import GPTLitModule
from gptlit.training.plot import plot_losses
from gptlit.training.precision import precision_dtype
from gptlit.training.throughput import measure_matmul_flops, training_flops_per_token
from gptlit.core.tokenizer import text_to_token_ids, token_ids_to_text
from gptlit.weights.io import save_book_pth, save_safetensors


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
        show(text.replace("\n", " "), pl_module)
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


class Throughput(L.Callback):
    """Training tokens/s and model FLOPs utilisation over the last ``window`` steps, in the bar and the logger.

    A step is timed from the end of one training batch to the end of the next, so it includes data loading and
    every hook; intervals holding an evaluation or an epoch's end are left out. MFU divides the model FLOPs of
    those tokens (gptlit.training.throughput) by ``peak_flops``, by default the matmul rate measured on the training
    device in the precision's dtype when fit starts. Only host clocks are read: no device sync is added.
    """

    def __init__(self, window: int = 20, peak_flops: float | None = None):
        self.window = window
        self.peak_flops = peak_flops
        self._steps: deque[tuple[float, int]] = deque(maxlen=window)
        self._last: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        if self.peak_flops is None:
            dtype = precision_dtype(trainer.precision)
            self.peak_flops = measure_matmul_flops(pl_module.device, dtype)

    def on_train_batch_end(self, trainer, pl_module: GPTLitModule, outputs, batch, batch_idx: int) -> None:
        now = perf_counter()
        inputs = batch[0]
        if self._last is not None:
            self._steps.append((now - self._last, inputs.numel() * trainer.world_size))
        self._last = now
        if not self._steps:
            return
        seconds = sum(s for s, _ in self._steps)
        tokens_per_sec = sum(n for _, n in self._steps) / seconds
        mfu = tokens_per_sec * training_flops_per_token(pl_module.config, inputs.shape[1]) / self.peak_flops
        pl_module.log_dict(
            {"train/tokens_per_sec": tokens_per_sec, "train/mfu": mfu},
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )

    def _interrupt(self, *args) -> None:
        self._last = None

    # Lightning's validation loop and gptlit.book.BookSchedule both announce an evaluation with this hook.
    on_validation_epoch_start = on_train_epoch_end = on_train_epoch_start = _interrupt


class FastFloat32Matmuls(L.Callback):
    """On CUDA, let fp32 matmuls run on TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation).

    Elsewhere nothing changes: on CPU the same switch may move fp32 matmuls to bf16 and alter results.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.set_float32_matmul_precision("high")
