"""Model weights in and out of files, never unpickling anything but tensors and plain data.

Sources: a Lightning ``.ckpt`` written by training (config and weights), a ``.pth``/``.pt`` state dict (the
book's ``torch.save(model.state_dict(), ...)``, which carries no config), a ``.safetensors`` file (exported
ones carry their config in the metadata), a GPT-2 name (``gpt2`` ... ``gpt2-xl``) or a Hugging Face GPT-2
folder (see gptlit.weights.gpt2).
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from gptlit.weights import gpt2
from gptlit.errors import UserError
from gptlit.files import atomic_write
from gptlit.core.model import GPTConfig, GPTModel

log = logging.getLogger(__name__)

# The sizes of conf/model/*.yaml, to name the `model=` a file fits; kept here so an installed gptlit, which has
# no conf/, names them too (tests/test_configs.py holds the two in step).
MODEL_SIZES = {
    "gpt124m": {"emb_dim": 768, "n_heads": 12, "n_layers": 12},
    "gpt355m": {"emb_dim": 1024, "n_heads": 16, "n_layers": 24},
    "gpt774m": {"emb_dim": 1280, "n_heads": 20, "n_layers": 36},
    "gpt1558m": {"emb_dim": 1600, "n_heads": 25, "n_layers": 48},
    "tiny": {"emb_dim": 32, "n_heads": 2, "n_layers": 2},
}
GPT2_VOCAB_SIZE = 50257
CONFIG_METADATA_KEY = "gptlit.config"
WEIGHT_SUFFIXES = (".ckpt", ".pth", ".pt", ".safetensors")


@dataclass
class Weights:
    state: dict[str, torch.Tensor]  # GPTModel's names, without the book's mask buffers
    config: GPTConfig | None  # None when the file does not say (a bare state dict)
    source: str

    @property
    def tied(self) -> bool:
        """The output head shares the token embedding's storage (GPT-2, and models trained from it)."""
        head, emb = self.state.get("out_head.weight"), self.state.get("tok_emb.weight")
        return head is not None and emb is not None and head.shape == emb.shape and head.data_ptr() == emb.data_ptr()

    @property
    def context_length(self) -> int:
        return self.state["pos_emb.weight"].shape[0]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint or torch state dict, loaded with weights_only=True onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist or is not a file; pass the path of a {'/'.join(WEIGHT_SUFFIXES)} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"checkpoint {path} holds more than tensors and plain data, so it was not loaded "
            f"({str(err).splitlines()[0]}); only load files you trust, exported as weights"
        ) from None
    except Exception as err:  # torch reports damaged files as RuntimeError, EOFError, KeyError, ...
        first_line = (str(err).splitlines() or [""])[0][:120]
        raise UserError(
            f"checkpoint {path} is truncated or not a PyTorch checkpoint ({type(err).__name__}: {first_line})"
        ) from None


def _clean(state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source} is not a state dict of tensors (nor a gptlit Lightning checkpoint)")
    # The book's attention keeps its causal mask as a buffer; it is derivable, so it is not a weight.
    return {k: v for k, v in state.items() if not k.endswith(".att.mask")}


def _read_safetensors(path: Path) -> Weights:
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})") from None
    config = GPTConfig.from_any(json.loads(metadata[CONFIG_METADATA_KEY])) if CONFIG_METADATA_KEY in metadata else None
    return Weights(_clean(state, str(path)), config, str(path))


def read_weights(source: str | Path) -> Weights:
    """The weights of ``source`` (a file, a GPT-2 name or folder) in GPTModel's names, with its config if known."""
    source_str = str(source)
    path = Path(source)
    if not path.is_file() and (path.is_dir() or path.suffix not in WEIGHT_SUFFIXES):
        config, state = gpt2.read_gpt2(gpt2.locate(source))
        # One tensor for both, so the model built from them ties its head to the embedding.
        if state["out_head.weight"] is state["tok_emb.weight"] or torch.equal(state["out_head.weight"], state["tok_emb.weight"]):
            state["out_head.weight"] = state["tok_emb.weight"]
        return Weights(state, config, source_str)
    if not path.is_file():
        raise UserError(
            f"{source_str} does not exist; pass a {'/'.join(WEIGHT_SUFFIXES)} file, a GPT-2 name "
            f"({', '.join(gpt2.GPT2_REPOS)}) or a folder with config.json and model.safetensors"
        )
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    ckpt = read_checkpoint(path)
    if isinstance(ckpt, Mapping) and "state_dict" in ckpt:  # a Lightning checkpoint, whatever its suffix
        try:
            config = GPTConfig.from_any(ckpt["hyper_parameters"]["model"])
        except (KeyError, TypeError):
            raise UserError(f"{path} is a Lightning checkpoint without a gptlit model config in its hyper-parameters") from None
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        return Weights(_clean(state, source_str), config, source_str)
    return Weights(_clean(ckpt, source_str), None, source_str)


def shapes_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What the tensor shapes tell of the architecture (not n_heads: no shape depends on it)."""
    try:
        vocab_size, emb_dim = state["tok_emb.weight"].shape
        context_length = state["pos_emb.weight"].shape[0]
    except (KeyError, ValueError):
        return {}
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("trf_blocks.")}
    return {
        "vocab_size": vocab_size,
        "context_length": context_length,
        "emb_dim": emb_dim,
        "n_layers": len(blocks),
        "qkv_bias": "trf_blocks.0.att.W_query.bias" in state,
    }


def fitting_model(state: Mapping[str, torch.Tensor]) -> str:
    """The `model=...` overrides that build a model these weights fit, e.g. `model=gpt124m data.context_length=1024`."""
    found = shapes_config(state)
    if not found:
        return "no GPTModel config (it lacks tok_emb.weight or pos_emb.weight)"
    for name, sizes in sorted(MODEL_SIZES.items()):
        if found["vocab_size"] == GPT2_VOCAB_SIZE and all(sizes[k] == found[k] for k in ("emb_dim", "n_layers")):
            extra = " model.qkv_bias=true" if found["qkv_bias"] else ""
            return f"model={name} data.context_length={found['context_length']}{extra}"
    sizes = " ".join(f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in found.items() if k != "context_length")
    return f"{sizes} data.context_length={found['context_length']} (no conf/model config has these sizes)"


def _describe(config: GPTConfig) -> str:
    return f"emb_dim={config.emb_dim}, n_layers={config.n_layers}, vocab_size={config.vocab_size}, context_length={config.context_length}"


def check_fits(model: GPTModel, weights: Weights) -> None:
    """Any difference in tensor names or shapes between ``weights`` and ``model`` is one UserError naming them."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.state.items()}
    problems = [f"{k} is {list(found[k])} in the file but {list(shape)} in the model" for k, shape in expected.items() if k in found and found[k] != shape]
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing:
        problems.append(f"{len(missing)} tensors missing from the file (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors the model lacks (e.g. {unexpected[0]})")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise UserError(
            f"{weights.source} does not fit the model ({_describe(model.cfg)}): {shown}; "
            f"the file fits {fitting_model(weights.state)}"
        )


def load_weights(model: GPTModel, weights: Weights) -> GPTModel:
    """Copy ``weights`` into ``model`` once check_fits agrees."""
    check_fits(model, weights)
    model.load_state_dict(weights.state)
    if weights.tied:
        model.out_head.weight = model.tok_emb.weight
    return model


def model_from_weights(weights: Weights, config: GPTConfig | Mapping[str, Any] | None = None) -> GPTModel:
    """A GPTModel holding ``weights``: built from the file's own config, else from ``config`` (model=...)."""
    if weights.config is None and config is None:
        raise UserError(
            f"{weights.source} holds weights without a model config; say which model it is, "
            f"e.g. {fitting_model(weights.state)}"
        )
    model = GPTModel(weights.config if weights.config is not None else config)
    return load_weights(model, weights)


def model_from_checkpoint(path: str | Path) -> GPTModel:
    """The GPTModel saved in a gptlit Lightning checkpoint (or any source that carries its config)."""
    return model_from_weights(read_weights(path))


def init_model(config: GPTConfig, source: str | Path) -> GPTModel:
    """A model of ``config`` for training, starting from the weights of ``source`` (init_from=).

    The architecture is the config's; two settings follow the weights: a position table longer than
    ``context_length`` is cropped to its first rows (OpenAI's 1024 positions trained at 256), and
    ``qkv_bias`` is whatever the weights hold (True for OpenAI's).
    """
    weights = read_weights(source)
    state = dict(weights.state)
    available = weights.context_length if "pos_emb.weight" in state else config.context_length
    if config.context_length > available:
        raise UserError(
            f"context_length {config.context_length} exceeds the {available} positions of {weights.source}; "
            f"use data.context_length={available} or less"
        )
    if config.context_length < available:
        log.info("Using the first %d of the %d positions of %s", config.context_length, available, weights.source)
        state["pos_emb.weight"] = state["pos_emb.weight"][: config.context_length]
    qkv_bias = "trf_blocks.0.att.W_query.bias" in state
    if qkv_bias != config.qkv_bias and shapes_config(state):
        log.info("Setting qkv_bias=%s, as the weights of %s have%s query/key/value biases", qkv_bias, weights.source, "" if qkv_bias else " no")
        config = replace(config, qkv_bias=qkv_bias)
    model = load_weights(GPTModel(config), replace(weights, state=state))
    # No tensor shape depends on the head count, so only a config that states it can be checked against it.
    if weights.config is not None and weights.config.n_heads != config.n_heads:
        raise UserError(
            f"{weights.source} was trained with n_heads={weights.config.n_heads}, the model has {config.n_heads}; "
            f"set model.n_heads={weights.config.n_heads}"
        )
    return model


def book_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """The state dict the book's GPTModel loads strictly: ours plus its per-layer causal mask buffers."""
    n = model.cfg.context_length
    mask = torch.triu(torch.ones(n, n), diagonal=1)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for i in range(model.cfg.n_layers):
        state[f"trf_blocks.{i}.att.mask"] = mask
    return state


def save_safetensors(model: GPTModel, path: str | Path) -> Path:
    """``model.safetensors`` with the config in its metadata, so it loads without naming a model."""
    path = Path(path)
    # safetensors refuses tensors that share memory (a tied head): each gets its own copy.
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        state[k] = v.clone() if v.data_ptr() in seen else v.contiguous()
        seen.add(v.data_ptr())
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(model.cfg.to_dict())}
    with atomic_write(path) as f:
        f.write(save(state, metadata=metadata))
    return path


def save_book_pth(model: GPTModel, path: str | Path) -> Path:
    """``model.pth``: a plain state dict, loadable by the book's ``GPTModel`` (and by ours)."""
    path = Path(path)
    state = book_state_dict(model)
    with atomic_write(path) as f:
        torch.save(state, f)
    return path
