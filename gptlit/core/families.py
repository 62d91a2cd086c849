"""The model families, and which config and model class a stored config belongs to.

A config says its family in ``family`` (``llama3``, ``qwen3``); configs without one are GPT-2's, as every
checkpoint written before the other families existed, and the book's own config dicts.
"""

from __future__ import annotations

from typing import Any, Mapping, Union

from torch import nn

from gptlit.errors import UserError
from gptlit.core.llama import FAMILIES as LLAMA_FAMILIES, LlamaConfig, LlamaModel
from gptlit.core.model import GPTConfig, GPTModel

ModelConfig = Union[GPTConfig, LlamaConfig]
FAMILIES = ("gpt2", *LLAMA_FAMILIES)
MODEL_CLASSES = (GPTModel, LlamaModel)  # what the KV cache, the server and the weights code take


def model_config(cfg: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    """The config object of ``cfg``'s family (a config object is returned as it is)."""
    if isinstance(cfg, (GPTConfig, LlamaConfig)):
        return cfg
    family = dict(cfg).get("family", "gpt2")
    if family == "gpt2":
        return GPTConfig.from_any({k: v for k, v in dict(cfg).items() if k != "family"})
    if family in LLAMA_FAMILIES:
        return LlamaConfig.from_any(cfg)
    raise UserError(f"model.family must be one of {FAMILIES}, got {family!r}")


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model of ``cfg``'s family."""
    config = model_config(cfg)
    return GPTModel(config) if isinstance(config, GPTConfig) else LlamaModel(config)
