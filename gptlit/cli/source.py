"""The model that an entry point's ``ckpt_path=``/``pretrained=`` (and ``model=`` for bare state dicts) name.

generate.py, eval.py and export.py read their weights through here, so each accepts every source the others do.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from gptlit.core.model import GPTModel
from gptlit.core.tokenizer import GPT2, Tokenizer, load_tokenizer
from gptlit.errors import UserError
from gptlit.weights.io import Weights, model_from_weights, read_source


def load_model(cfg: DictConfig) -> tuple[GPTModel, Weights]:
    """The model of ``cfg.ckpt_path`` or ``cfg.pretrained``, and the weights it was built from; refused in one
    line when they were trained with another tokenizer than ``cfg.tokenizer.path`` names."""
    weights = read_source(cfg.ckpt_path, cfg.pretrained)
    config = None
    if weights.config is None and cfg.get("model") is not None:
        # The length of the file's position table decides the context, not the model group's default.
        config = instantiate(cfg.model, context_length=weights.context_length)
    model = model_from_weights(weights, config)
    check_tokenizer(model.cfg.tokenizer, load_tokenizer(cfg.tokenizer.path), weights.source)
    return model, weights


def check_tokenizer(trained_with: str, tokenizer: Tokenizer, source: str) -> None:
    if trained_with != tokenizer.fingerprint:
        used = "GPT-2's BPE" if trained_with == GPT2 else f"the tokenizer {trained_with}"
        given = "GPT-2's BPE (tokenizer.path unset)" if tokenizer.fingerprint == GPT2 else \
            f"tokenizer.path={tokenizer.name} ({tokenizer.fingerprint})"
        fix = "leave tokenizer.path unset" if trained_with == GPT2 else "pass tokenizer.path= the tokenizer.json it was trained with"
        raise UserError(f"{source} was trained with {used}, not {given}; {fix}")
