"""serve.py: OpenAI's API and a chat page for a model; the script at the root calls cli().

The serving itself is gptlit/serving (docs/serving.md); this file only turns the Hydra config into its settings.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from gptlit.cli.command_line import CONFIG_DIR, check_command_line
from gptlit.cli.source import load_model
from gptlit.cli.user_errors import exit_on_user_error
from gptlit.core.device import pick_device
from gptlit.core.tokenizer import load_tokenizer
from gptlit.errors import check_int
from gptlit.serving import make_app
from gptlit.serving.chat_template import ChatTemplate
from gptlit.serving.server import serve
from gptlit.serving.settings import Limits, ServeSettings


def settings_of(cfg: DictConfig, eos_id: int) -> ServeSettings:
    c = OmegaConf.to_container(cfg, resolve=True)
    source = c["ckpt_path"] if c["ckpt_path"] is not None else c["pretrained"]
    # Without a source load_model refuses the command line; the name is never used then.
    name = c["model_name"] if c["model_name"] is not None else Path(str(source or "gptlit")).name
    return ServeSettings(
        model_name=str(name), api_key=None if c["api_key"] is None else str(c["api_key"]),
        max_batch=c["max_batch"], max_queue=c["max_queue"], default_max_tokens=c["max_tokens"],
        default_temperature=c["temperature"], long_prompt=c["long_prompt"],
        eos_id=eos_id if c["eos_id"] == "auto" else c["eos_id"],
        limits=Limits(**c["limits"]), chat=ChatTemplate(**c["chat"]),
    )


def run(cfg: DictConfig) -> None:
    # Settings first: a bad value is refused before the weights are read. The eos id is the tokenizer's, which a
    # model folder's weights bring along (load_model sets tokenizer.path), so it is filled in once they are read.
    settings_of(cfg, eos_id=0)
    if cfg.tokenizer.path is not None:
        load_tokenizer(cfg.tokenizer.path)
    device = pick_device(cfg.device)
    if cfg.threads is not None:
        check_int("threads", cfg.threads)
        torch.set_num_threads(cfg.threads)
    model = load_model(cfg)[0].to(device).eval()
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    settings = settings_of(cfg, tokenizer.eot_id)
    app = make_app(model, tokenizer, settings)
    serve(app, cfg.host, cfg.port, banner=f"serving {settings.model_name} on {device.type} at ",
          keyed=settings.api_key is not None, stopping=app.state.engine.cancel_all)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="serve")
def main(cfg: DictConfig) -> None:
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    with exit_on_user_error():
        run(cfg)


def cli() -> None:
    check_command_line("serve", sys.argv[1:])
    main()
