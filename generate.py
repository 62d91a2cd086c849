"""Generate text from a trained model: `python generate.py ckpt_path=... prompt="..." [decoding=sample]`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from gptlit.cli import check_group_choices, exit_on_user_error
from gptlit.errors import UserError
from gptlit.generation import generate
from gptlit.tokenizer import text_to_token_ids, token_ids_to_text
from gptlit.weights import model_from_checkpoint


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def run(cfg: DictConfig) -> str:
    decoding = instantiate(cfg.decoding)
    if cfg.max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {cfg.max_new_tokens}")
    if not cfg.prompt:
        raise UserError('prompt is empty; pass some text, e.g. prompt="Every effort moves you"')
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model = model_from_checkpoint(cfg.ckpt_path).to(device).eval()
    idx = text_to_token_ids(cfg.prompt).to(device)
    out = generate(
        model,
        idx,
        cfg.max_new_tokens,
        context_size=model.cfg.context_length,
        temperature=decoding.temperature,
        top_k=decoding.top_k,
        top_p=decoding.top_p,
        eos_id=decoding.eos_id,
    )
    return token_ids_to_text(out.cpu())


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        print(run(cfg))


if __name__ == "__main__":
    check_group_choices(Path(__file__).resolve().parent / "conf", sys.argv[1:])
    main()
