"""Callbacks of a training run: a text sample after each epoch, the loss plot at the end, throughput."""

from __future__ import annotations

import math
import sys
from collections import deque
from pathlib import Path
from time import perf_counter

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tqdm import tqdm

from gptlit.core.device import model_device
from gptlit.core.generation import DecodingConfig, generate
from gptlit.core.model import GPTModel
from gptlit.training.full_model import full_model
from gptlit.training.console import show
from gptlit.training.module import GPTLitModule
from gptlit.training.plot import plot_losses
from gptlit.core.device import precision_dtype
from gptlit.training.throughput import measure_matmul_flops, training_flops_per_token
from gptlit.core.tokenizer import text_to_token_ids, token_ids_to_text
from gptlit.weights.io import save_book_pth, save_safetensors


class SampleText(L.Callback):
    """Generate from ``start_context`` after every epoch, print it on one line and log it to TensorBoard.

    Every rank takes part (see gptlit.training.full_model: sharded weights are gathered collectively); global
    rank zero samples and prints.
    """

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
        self.seed = seed
        # Sampling draws from generators of its own, one per device it samples on, so the decoding settings never
        # change the training run: neither the CPU's global generator nor a GPU's, which drive dropout.
        self._generators: dict[str, torch.Generator] = {}
        self._restored: dict[str, torch.Tensor] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            generator = torch.Generator(device=device).manual_seed(self.seed)
            if key in self._restored:
                generator.set_state(self._restored.pop(key))
            self._generators[key] = generator
        return self._generators[key]

    def sample(self, model: GPTModel) -> str:
        was_training = model.training
        model.eval()
        try:
            device = model_device(model)
            idx = text_to_token_ids(self.start_context).to(device)
            out = generate(model, idx, self.max_new_tokens, context_size=model.cfg.context_length,
                           decoding=self.decoding, generator=self.generator(device))
        finally:
            model.train(was_training)
        return token_ids_to_text(out.cpu())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        model = full_model(trainer, pl_module)
        if model is None:
            return
        text = self.sample(model)
        show(text.replace("\n", " "), pl_module)
        if isinstance(trainer.logger, TensorBoardLogger):
            trainer.logger.experiment.add_text("sample", text, trainer.global_step)

    def state_dict(self) -> dict:
        return {"generators": {key: g.get_state() for key, g in self._generators.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self._generators.clear()
        self._restored = dict(state_dict.get("generators", {}))
        if "generator" in state_dict:  # written before there was one generator per device
            self._restored["cpu"] = state_dict["generator"]


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
    """One bar for the whole run, in optimizer steps, without the evaluation bars (so the book's evaluation lines
    read as a table).

    Its total is the run's last step (max_steps, the epochs, or the token budget), so the time estimate covers
    the whole run; its description counts epochs from 1, as the evaluation lines do; a run resumed mid-epoch
    starts at the step it resumed from and estimates from the steps of this session only. With a token budget
    (trainer.max_tokens) it shows the tokens done against the budget.
    """

    def init_validation_tqdm(self):
        bar = super().init_validation_tqdm()
        bar.disable = True
        return bar

    def on_train_start(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        total = trainer.estimated_stepping_batches
        # tqdm's rate counts from `initial`: a resumed run's estimate rests on its own steps only.
        self.train_progress_bar = Tqdm(
            desc=self.describe(trainer),
            total=int(total) if math.isfinite(total) else None,
            initial=trainer.global_step,
            unit="step",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    @staticmethod
    def describe(trainer: L.Trainer) -> str:
        epochs = trainer.max_epochs
        budget = getattr(trainer, "max_tokens", None)
        of = f"/{epochs}" if epochs is not None and epochs > 0 and not budget else ""
        return f"Epoch {trainer.current_epoch + 1}{of}"

    def on_train_epoch_start(self, trainer: L.Trainer, *_) -> None:
        self.train_progress_bar.set_description(self.describe(trainer), refresh=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: GPTLitModule, outputs, batch, batch_idx: int) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        # Accumulating batches leave the step where it was: nothing to redraw.
        if bar.disable or step == bar.n or (step % self.refresh_rate and step != bar.total):
            return
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        budget = getattr(trainer, "max_tokens", None)
        if budget:
            done = getattr(pl_module, "tokens_seen", trainer.global_step * trainer.tokens_per_step)
            metrics = {"tokens": f"{count(done)}/{count(budget)}", **metrics}
        return metrics


def count(n: int) -> str:
    """1234567 as 1.23M, 500 as 500."""
    return str(int(n)) if n < 1000 else tqdm.format_sizeof(n)


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
