"""The model that an entry point's ``ckpt_path=``/``pretrained=`` (and ``model=`` for bare state dicts) name.

generate.py, eval.py, export.py and serve.py read their weights through here, so each accepts every source the
others do.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from gptlit.core.tokenizer import GPT2, Tokenizer, load_tokenizer
from gptlit.errors import UserError
from gptlit.weights.io import Weights, model_from_weights, read_source


def load_model(cfg: DictConfig) -> tuple[nn.Module, Weights]:
    """The model of ``cfg.ckpt_path`` or ``cfg.pretrained``, and the weights it was built from; refused in one
    line when they were trained with another tokenizer than ``cfg.tokenizer.path`` names.

    A model folder (a Hugging Face folder or download) that holds the tokenizer its weights were trained with
    sets ``cfg.tokenizer.path`` to it when that is unset, so the rest of the command (the prompt, eval's data,
    export's files) reads text with it."""
    weights = read_source(cfg.ckpt_path, cfg.pretrained)
    if cfg.tokenizer.path is None and weights.tokenizer is not None:
        cfg.tokenizer.path = str(weights.tokenizer)
    config = None
    if weights.config is None and cfg.get("model") is not None:
        # The length of the file's position table decides the context, not the model group's default.
        position_table = "pos_emb.weight" in weights.state
        config = instantiate(cfg.model, context_length=weights.context_length) if position_table else instantiate(cfg.model)
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
