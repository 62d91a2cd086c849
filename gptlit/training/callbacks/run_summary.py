"""The few lines a run prints before training: the model's size, the device and precision, where it writes."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L

from gptlit.files import shown_path
from gptlit.console import show
from gptlit.training.module import GPTLitModule


def millions(n: int) -> str:
    return f"{n / 1e6:.1f}M"


class RunSummary(L.Callback):
    """Replaces Lightning's model table and accelerator list with what a user needs to know about the run."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def setup(self, trainer: L.Trainer, pl_module: GPTLitModule, stage: str) -> None:
        # Counted here, before a sharding strategy splits the parameters across ranks.
        if stage != "fit" or not trainer.is_global_zero:
            return
        cfg = pl_module.config
        model = pl_module.model
        total = sum(p.numel() for p in model.parameters())  # a tied head's weight is counted once
        family = {"gpt2": "", "llama3": "Llama 3, ", "qwen3": "Qwen3, "}[cfg.family]
        if model.tied_head:
            size = f"{millions(total)} parameters (the output head is the token embedding, as in GPT-2)"
            if cfg.family != "gpt2":
                size = f"{millions(total)} parameters (the output head is the token embedding)"
        elif cfg.family != "gpt2":
            size = f"{millions(total)} parameters"
        else:
            # GPT-2 ties its output head to the token embedding; its "124M" counts the two once.
            tied = total - model.out_head.weight.numel()
            size = f"{millions(total)} parameters ({millions(tied)} with the output head tied, as GPT-2 counts)"
        processes = f" x {trainer.world_size} processes" if trainer.world_size > 1 else ""
        run_dir = shown_path(self.run_dir)
        show(f"model: {family}{size}, {cfg.n_layers} layers, emb_dim {cfg.emb_dim}, context {cfg.context_length}")
        show(f"device: {trainer.strategy.root_device.type}{processes}, precision {trainer.precision}")
        show(f"writing to {run_dir}{os.sep} (tensorboard --logdir {run_dir})")
