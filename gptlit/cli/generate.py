"""generate.py: generate text; the script at the root calls cli()."""

from __future__ import annotations

import sys
import warnings

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from gptlit.cli.command_line import CONFIG_DIR, check_command_line
from gptlit.cli.user_errors import exit_on_user_error
from gptlit.cli.source import load_model
from gptlit.core.generation import DecodingConfig, stream
from gptlit.core.device import model_device, pick_device
from gptlit.core.model import GPTModel
from gptlit.core.tokenizer import decode_stream, encode, get_tokenizer


def complete(model: GPTModel, prompt: str, cfg: DictConfig, decoding: DecodingConfig, out=None) -> None:
    """Print the prompt, then each piece of text as soon as its tokens are generated."""
    out = out or sys.stdout
    idx = torch.tensor([encode(prompt)], device=model_device(model))
    tokens = (t.item() for t in stream(model, idx, cfg.max_new_tokens, model.cfg.context_length, decoding))
    print(prompt, end="", file=out, flush=True)
    for piece in decode_stream(tokens, get_tokenizer()):
        print(piece, end="", file=out, flush=cfg.stream)
    print(file=out, flush=True)


def run(cfg: DictConfig) -> None:
    decoding = instantiate(cfg.decoding)
    device = pick_device(cfg.device)  # a device this machine lacks is refused before the weights are read
    model = load_model(cfg)[0].to(device).eval()
    # Seeded after the model is built (building draws random initial weights), so sampling draws alone decide.
    torch.manual_seed(cfg.seed)
    prompts = (line.rstrip("\n") for line in sys.stdin) if cfg.interactive else [cfg.prompt]
    for prompt in prompts:
        if cfg.interactive and not prompt.strip():
            continue
        complete(model, prompt, cfg, decoding)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="generate")
def main(cfg: DictConfig) -> None:
    # Warnings are for the user here: one line each, without the source line Python adds.
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    with exit_on_user_error():
        run(cfg)


def cli() -> None:
    check_command_line("generate", sys.argv[1:])
    main()
