"""The model that an entry point's ``ckpt_path=``/``pretrained=`` (and ``model=`` for bare state dicts) name.

generate.py, eval.py and export.py read their weights through here, so each accepts every source the others do.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from gptlit.core.model import GPTModel
from gptlit.weights.io import Weights, model_from_weights, read_source


def load_model(cfg: DictConfig) -> tuple[GPTModel, Weights]:
    """The model of ``cfg.ckpt_path`` or ``cfg.pretrained``, and the weights it was built from."""
    weights = read_source(cfg.ckpt_path, cfg.pretrained)
    config = None
    if weights.config is None and cfg.get("model") is not None:
        # The length of the file's position table decides the context, not the model group's default.
        config = instantiate(cfg.model, context_length=weights.context_length)
    return model_from_weights(weights, config), weights
