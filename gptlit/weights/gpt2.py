"""OpenAI's GPT-2 weights (book section 5.5), read from the Hugging Face format into GPTModel's names.

The hub's ``openai-community/gpt2*`` repositories and any folder written by transformers'
``GPT2LMHeadModel.save_pretrained`` hold a ``config.json`` and a ``model.safetensors``. GPT-2 stores its
linear layers as ``Conv1D``, whose weight is the transpose of ``nn.Linear``'s, and packs query, key and value
into one ``c_attn`` matrix; the mapping undoes both. The model gets the book's settings for these weights:
the checkpoint's context (1024 for OpenAI's), ``qkv_bias=True``, and an output head tied to the token
embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gptlit import hub
from gptlit.errors import UserError
from gptlit.core.model import GPTConfig

GPT2_REPOS = {
    "gpt2": "openai-community/gpt2",  # 124M
    "gpt2-medium": "openai-community/gpt2-medium",  # 355M
    "gpt2-large": "openai-community/gpt2-large",  # 774M
    "gpt2-xl": "openai-community/gpt2-xl",  # 1558M
}
FILES = ("config.json", "model.safetensors")
# The key gptlit adds to an export's config.json: the fingerprint of the tokenizer the model was trained with.
TOKENIZER_KEY = "gptlit_tokenizer"


def locate(source: str | Path) -> Path:
    """The folder holding the GPT-2 files: ``source`` itself, or the hub cache after downloading them."""
    path = Path(source)
    if path.is_dir():
        missing = [name for name in FILES if not (path / name).is_file()]
        if missing:
            raise UserError(
                f"{path} lacks {' and '.join(missing)}; pass a folder written by transformers' save_pretrained"
            )
        return path
    name = str(source)
    if name not in GPT2_REPOS:
        raise UserError(
            f"{name} is neither a GPT-2 name ({', '.join(GPT2_REPOS)}) nor an existing folder with config.json "
            "and model.safetensors, nor a weights file (.ckpt/.pth/.pt/.safetensors)"
        )
    from huggingface_hub import hf_hub_download

    repo = GPT2_REPOS[name]
    online = hub.reachable()
    try:
        paths = [Path(hf_hub_download(repo, f, local_files_only=not online)) for f in FILES]
    except Exception as err:  # the hub client raises many kinds (HTTP, connection, cache misses)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"could not get {repo} from the Hugging Face hub ({'offline' if not online else reason}); connect to "
            f"the internet, or pass pretrained=/path/to/folder holding its {' and '.join(FILES)}"
        ) from None
    return paths[0].parent


def read_gpt2(folder: str | Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """GPTConfig and state dict (GPTModel's names, output head included) of a Hugging Face GPT-2 folder."""
    folder = Path(folder)
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tensors = load_file(folder / "model.safetensors")
    except (OSError, ValueError, SafetensorError) as err:  # ValueError: bad JSON, bytes that are not UTF-8
        raise UserError(f"{folder} does not hold a readable GPT-2 checkpoint ({str(err).splitlines()[0]})") from None
    if not isinstance(hf, dict) or not all(isinstance(hf.get(k), int) for k in ("vocab_size", "n_embd", "n_head", "n_layer")):
        raise UserError(f"{folder}/config.json is damaged: it lacks GPT-2's vocab_size, n_embd, n_head and n_layer")
    if hf.get("model_type") != "gpt2":
        raise UserError(f"{folder} holds a {hf.get('model_type')!r} model; only GPT-2 (model_type gpt2) maps onto GPTModel")
    # GPTModel hard-codes GPT-2's tanh GELU and LayerNorm eps; refuse checkpoints built otherwise.
    if hf.get("activation_function", "gelu_new") != "gelu_new" or hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise UserError(f"{folder} uses another activation or LayerNorm epsilon than GPT-2; GPTModel cannot run it")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]) or hf.get("scale_attn_by_inverse_layer_idx"):
        raise UserError(f"{folder} changes GPT-2's feed-forward width or attention scaling; GPTModel cannot run it")
    config = GPTConfig(
        vocab_size=hf["vocab_size"],
        context_length=hf.get("n_positions", hf.get("n_ctx", 1024)),
        emb_dim=hf["n_embd"],
        n_heads=hf["n_head"],
        n_layers=hf["n_layer"],
        drop_rate=0.0,
        qkv_bias=True,
        # An export of a model trained with another tokenizer says so (gptlit.weights.hf_export); GPT-2's do not.
        tokenizer=hf.get(TOKENIZER_KEY) or "gpt2",
    )
    hf_state = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    try:
        return config, _map(hf_state, config.n_layers)
    except KeyError as err:
        raise UserError(f"{folder}/model.safetensors lacks the GPT-2 tensor {err.args[0]}") from None


# The name table between GPT-2's Hugging Face layout (the "transformer." prefix dropped) and GPTModel's, used
# both ways: reading GPT-2 weights (``_map``) and exporting ours (``to_gpt2``).
TOP_LEVEL = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.weight",
             "ln_f.weight": "final_norm.scale", "ln_f.bias": "final_norm.shift"}
# Per block: Conv1D layers (stored transposed, weight and bias) and LayerNorms (weight/bias are scale/shift).
LINEARS = {"attn.c_proj": "att.out_proj", "mlp.c_fc": "ff.layers.0", "mlp.c_proj": "ff.layers.2"}
NORMS = {"ln_1": "norm1", "ln_2": "norm2"}
# Packed into one c_attn in this order.
QKV = ("W_query", "W_key", "W_value")


def _map(hf: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    state = {ours: hf[name] for name, ours in TOP_LEVEL.items()}
    # Tied in GPT-2; a separate lm_head (tie_word_embeddings false) is taken as it is.
    state["out_head.weight"] = hf.get("lm_head.weight", hf["wte.weight"])
    for i in range(n_layers):
        h, ours = f"h.{i}.", f"trf_blocks.{i}."
        weights = hf[h + "attn.c_attn.weight"].t().chunk(3, dim=0)
        biases = hf[h + "attn.c_attn.bias"].chunk(3)
        for name, weight, bias in zip(QKV, weights, biases):
            state[f"{ours}att.{name}.weight"] = weight.contiguous()
            state[f"{ours}att.{name}.bias"] = bias
        for hf_name, name in LINEARS.items():
            state[f"{ours}{name}.weight"] = hf[f"{h}{hf_name}.weight"].t().contiguous()
            state[f"{ours}{name}.bias"] = hf[f"{h}{hf_name}.bias"]
        for hf_name, name in NORMS.items():
            state[f"{ours}{name}.scale"] = hf[f"{h}{hf_name}.weight"]
            state[f"{ours}{name}.shift"] = hf[f"{h}{hf_name}.bias"]
    return state


def to_gpt2(state: dict[str, torch.Tensor], n_layers: int, tied: bool) -> dict[str, torch.Tensor]:
    """GPTModel's state dict in transformers' GPT2LMHeadModel names and layout.

    A model without query/key/value biases (``qkv_bias=False``) gets zero ``c_attn`` biases, which GPT-2 always
    has and which leave its outputs unchanged. ``lm_head.weight`` is written only for an untied head.
    """
    hf = {f"transformer.{name}": state[ours] for name, ours in TOP_LEVEL.items()}
    if not tied:
        hf["lm_head.weight"] = state["out_head.weight"]
    for i in range(n_layers):
        h, ours = f"transformer.h.{i}.", f"trf_blocks.{i}."
        weights = [state[f"{ours}att.{name}.weight"] for name in QKV]
        biases = [state.get(f"{ours}att.{name}.bias", torch.zeros(w.shape[0], dtype=w.dtype)) for name, w in zip(QKV, weights)]
        hf[h + "attn.c_attn.weight"] = torch.cat(weights, dim=0).t()
        hf[h + "attn.c_attn.bias"] = torch.cat(biases)
        for hf_name, name in LINEARS.items():
            hf[f"{h}{hf_name}.weight"] = state[f"{ours}{name}.weight"].t()
            hf[f"{h}{hf_name}.bias"] = state[f"{ours}{name}.bias"]
        for hf_name, name in NORMS.items():
            hf[f"{h}{hf_name}.weight"] = state[f"{ours}{name}.scale"]
            hf[f"{h}{hf_name}.bias"] = state[f"{ours}{name}.shift"]
    return {k: v.detach().cpu().contiguous() for k, v in hf.items()}
