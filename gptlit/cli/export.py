"""export.py: export a model to hugging face transformers; the script at the root calls cli()."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from gptlit.cli.command_line import CONFIG_DIR, check_command_line
from gptlit.cli.user_errors import exit_on_user_error
from gptlit.cli.source import load_model
from gptlit.core.tokenizer import load_tokenizer
from gptlit.errors import UserError
from gptlit.weights.hf_export import export_model, find_run_config, model_card, push_to_hub

def run(cfg: DictConfig) -> Path:
    if OmegaConf.is_missing(cfg, "out_dir"):  # said before the weights are read, which can take minutes
        raise UserError("export.py needs out_dir=DIR, the folder to write the transformers model into, e.g. "
                        "out_dir=exported/my-gpt")
    model, weights = load_model(cfg)
    card = model_card(model, weights.source, weights.run, find_run_config(weights.source))
    out_dir = export_model(model, cfg.out_dir, card, overwrite=cfg.overwrite, tokenizer=load_tokenizer(cfg.tokenizer.path))
    print(f"wrote {out_dir} (config.json, model.safetensors, tokenizer files, README.md); load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out_dir)!r})")
    if cfg.push_to_hub:
        print(f"pushed to {push_to_hub(out_dir, cfg.push_to_hub, cfg.private)}")
    return out_dir


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        run(cfg)


def cli() -> None:
    check_command_line("export", sys.argv[1:])
    main()
