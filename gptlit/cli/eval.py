"""eval.py: evaluate a model; the script at the root calls cli()."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gptlit.cli.command_line import CONFIG_DIR, check_command_line
from gptlit.cli.user_errors import exit_on_user_error
from gptlit.cli.source import load_model
from gptlit.core.device import pick_device
from gptlit.core.model import GPTModel
from gptlit.core.tokenizer import load_tokenizer
from gptlit.errors import UserError
from gptlit.evaluation import hellaswag
from gptlit.evaluation.perplexity import perplexity
from gptlit.evaluation.splits import token_split
from gptlit.files import atomic_write, shown_path

class Perplexity:
    """Sliding-window perplexity on the ``split`` of the data group's text (its settings are cfg.data's)."""

    name = "perplexity"

    def __call__(self, model: GPTModel, cfg: DictConfig) -> dict[str, Any]:
        window = cfg.data.context_length or model.cfg.context_length
        if window > model.cfg.context_length:
            raise UserError(
                f"data.context_length={window} exceeds the model's context of {model.cfg.context_length} tokens; "
                f"use at most {model.cfg.context_length}, or null for the model's"
            )
        # Only the data group's token splits are read: eval cuts windows of its own (the last may be shorter), so
        # the group is asked for the smallest windows and never refuses a split shorter than the model's context.
        datamodule = instantiate(cfg.data, context_length=1, stride=1, batch_size=1)
        datamodule.prepare_data()
        datamodule.setup("validate")
        tokens = token_split(datamodule, cfg.split)
        result = perplexity(model, tokens, window, cfg.data.stride, cfg.data.batch_size, cfg.precision, cfg.progress,
                            byte_lengths=load_tokenizer(cfg.tokenizer.path).byte_lengths)
        print(f"{cfg.split} split of {cfg.data.path}{split_note(cfg)}: loss {result.loss:.4f}, perplexity {result.perplexity:.3f}, "
              f"{result.bpb:.4f} bits per byte, "
              f"{result.tokens} tokens scored in {result.windows} windows of {window} (stride {cfg.data.stride or window})")
        return {
            "loss": result.loss,
            "perplexity": result.perplexity,
            "bpb": result.bpb,
            "tokens": result.tokens,
            "data": {**OmegaConf.to_container(cfg.data, resolve=True), "split": cfg.split},
            "settings": {"window": window, "stride": cfg.data.stride or window, "windows": result.windows,
                         "batch_size": cfg.data.batch_size},
        }


def split_note(cfg: DictConfig) -> str:
    """Which part of a text file the val split is, so a user scoring a file of their own is not surprised."""
    ratio = cfg.data.get("train_ratio")
    if cfg.split != "val" or ratio is None:
        return ""
    return f" (its last {1 - ratio:.0%}, after data.train_ratio={ratio}; split=all scores all of it)"


@dataclass
class HellaSwag:
    """HellaSwag accuracy (gptlit.evaluation.hellaswag) on a local jsonl (``path``) or the validation set, which is
    downloaded from ``url`` into ``cache_dir`` once."""

    path: str | None = None
    cache_dir: str = "data/hellaswag"
    url: str = hellaswag.VAL_URL
    batch_size: int = 4
    limit: int | None = None
    name = "hellaswag"

    def __call__(self, model: GPTModel, cfg: DictConfig) -> dict[str, Any]:
        path = hellaswag.locate(self.path, self.cache_dir, self.url)
        items = hellaswag.read_items(path, self.limit)
        result = hellaswag.hellaswag(model, items, self.batch_size, cfg.precision, cfg.progress,
                                     load_tokenizer(cfg.tokenizer.path))
        print(f"hellaswag ({path}): acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f} on {result['items']} items")
        return {**result, "data": {"path": str(path)}, "settings": {"batch_size": self.batch_size, "limit": self.limit}}


def run(cfg: DictConfig) -> dict[str, Any]:
    device = pick_device(cfg.device)  # a device this machine lacks is refused before the weights are read
    model, weights = load_model(cfg)
    model = model.to(device).eval()
    task = instantiate(cfg.task)
    result = task(model, cfg)
    report = {"task": task.name, **result, "source": weights.source, "model": model.cfg.to_dict(),
              "precision": cfg.precision, "device": str(device)}
    path = Path(cfg.run_dir) / "eval.json"
    with atomic_write(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {shown_path(path)}")
    return report


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(run_dir=cfg.run_dir):
        run(cfg)


def cli() -> None:
    check_command_line("eval", sys.argv[1:])
    main()
