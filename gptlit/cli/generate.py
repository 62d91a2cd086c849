"""generate.py: generate text; the script at the root calls cli()."""

from __future__ import annotations

import sys
from pathlib import Path
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
from gptlit.core.tokenizer import decode_stream, load_tokenizer
from gptlit.errors import UserError


def complete(model: GPTModel, prompt: str, cfg: DictConfig, decoding: DecodingConfig, out=None) -> None:
    """Print the prompt, then each piece of text as soon as its tokens are generated (``stream=true``), or the
    whole text once it is done (``stream=false``), whatever buffering the output has."""
    out = out or sys.stdout
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    # After the BOS that Llama 3's tokenizer puts first, as transformers' tokenizer(prompt) does (GPT-2's: none).
    idx = torch.tensor([tokenizer.encode_prompt(prompt)], device=model_device(model))
    tokens = (t.item() for t in stream(model, idx, cfg.max_new_tokens, model.cfg.context_length, decoding))
    pieces = decode_stream(tokens, tokenizer)
    if not cfg.stream:
        pieces = ["".join(pieces)]
    print(prompt, end="", file=out, flush=True)
    for piece in pieces:
        print(piece, end="", file=out, flush=True)
    print(file=out, flush=True)


def read_prompt(prompt_file: str) -> str:
    """The text of ``prompt_file`` (``-``: standard input), without the newline that ends a file's last line."""
    try:
        text = sys.stdin.read() if prompt_file == "-" else Path(prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"prompt_file={prompt_file} cannot be read ({err.__class__.__name__}: {err}); pass a UTF-8 "
                        "text file, or - to read the prompt from stdin") from None
    return text.removesuffix("\n")


def run(cfg: DictConfig) -> None:
    decoding = instantiate(cfg.decoding)
    device = pick_device(cfg.device)  # a device this machine lacks is refused before the weights are read
    model = load_model(cfg)[0].to(device).eval()
    # Seeded after the model is built (building draws random initial weights), so sampling draws alone decide.
    torch.manual_seed(cfg.seed)
    if cfg.interactive:
        prompts = (line.rstrip("\n") for line in sys.stdin)
    else:
        prompts = [read_prompt(cfg.prompt_file) if cfg.prompt_file else cfg.prompt]
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
