"""Llama 3 and Qwen3 weights as Hugging Face names them (``LlamaForCausalLM``, ``Qwen3ForCausalLM``), both ways.

The two layouts hold the same tensors under other names, with nothing transposed: Hugging Face's rotary
embedding rotates a head's first half against its second, as gptlit.core.llama does, so queries and keys need
no permutation. The config moves between ``config.json``'s keys and LlamaConfig's; ``config.json`` is written
with the rotary settings both as transformers 4 reads them (``rope_theta``, ``rope_scaling``) and as
transformers 5 writes them (``rope_parameters``), so either version loads an export.

``read_llama`` reads a whole folder (gptlit.weights.hf_folder): its config, its memory-mapped tensors under
gptlit's names, and which tokenizer they belong to.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import torch

from gptlit.errors import UserError
from gptlit.core.llama import LlamaConfig
from gptlit.core.tokenizer import GPT2, TOKENIZER_FILE, file_fingerprint, load_tokenizer
from gptlit.weights import hf_folder
from gptlit.weights.gpt2 import TOKENIZER_KEY

MODEL_TYPES = {"llama": "llama3", "qwen3": "qwen3"}  # config.json's model_type -> gptlit's family
ARCHITECTURES = {"llama3": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}

TOP_LEVEL = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "final_norm.weight",
             "lm_head.weight": "out_head.weight"}
PER_LAYER = {
    "self_attn.q_proj.weight": "att.W_query.weight",
    "self_attn.k_proj.weight": "att.W_key.weight",
    "self_attn.v_proj.weight": "att.W_value.weight",
    "self_attn.o_proj.weight": "att.out_proj.weight",
    "self_attn.q_norm.weight": "att.q_norm.weight",
    "self_attn.k_norm.weight": "att.k_norm.weight",
    "mlp.gate_proj.weight": "ff.fc1.weight",
    "mlp.up_proj.weight": "ff.fc2.weight",
    "mlp.down_proj.weight": "ff.fc3.weight",
    "input_layernorm.weight": "norm1.weight",
    "post_attention_layernorm.weight": "norm2.weight",
}


def ours(hf_name: str) -> str | None:
    """gptlit's name for a Hugging Face tensor name (None: not a weight of the model, e.g. rotary buffers)."""
    if hf_name in TOP_LEVEL:
        return TOP_LEVEL[hf_name]
    if hf_name.startswith("model.layers."):
        index, rest = hf_name[len("model.layers."):].split(".", 1)
        if rest in PER_LAYER:
            return f"trf_blocks.{index}.{PER_LAYER[rest]}"
    return None


def theirs(name: str) -> str:
    """Hugging Face's name for a gptlit tensor name."""
    for hf, mine in TOP_LEVEL.items():
        if name == mine:
            return hf
    _, index, rest = name.split(".", 2)
    for hf, mine in PER_LAYER.items():
        if rest == mine:
            return f"model.layers.{index}.{hf}"
    raise KeyError(name)


def state_from_hf(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {}
    for name, tensor in tensors.items():
        mine = ours(name)
        if mine is not None:
            state[mine] = tensor
    return state


def state_to_hf(state: Mapping[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """Hugging Face's tensors; a tied head is left out, as transformers saves a tied model."""
    return {theirs(name): tensor for name, tensor in state.items() if not (tied and name == "out_head.weight")}


def config_from_hf(hf: Mapping[str, Any]) -> LlamaConfig:
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UserError(f"config.json's model_type is {model_type!r}; gptlit reads {sorted(MODEL_TYPES)} "
                        "(Llama 3 and Qwen3) and GPT-2")
    rope = dict(hf.get("rope_parameters") or {})  # transformers 5
    legacy = dict(hf.get("rope_scaling") or {})  # transformers 4
    theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
    scaling_source = rope if rope.get("rope_type", "default") != "default" else legacy
    rope_type = scaling_source.get("rope_type", scaling_source.get("type", "default"))
    scaling = None
    if rope_type == "llama3":
        scaling = {"factor": scaling_source["factor"], "low_freq_factor": scaling_source["low_freq_factor"],
                   "high_freq_factor": scaling_source["high_freq_factor"],
                   "original_context_length": scaling_source["original_max_position_embeddings"]}
    elif rope_type not in ("default", None):
        raise UserError(f"config.json's rotary scaling {rope_type!r} is not implemented (gptlit runs Llama 3's and "
                        "none)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise UserError("config.json asks for biases in attention or the feed-forward; Llama 3 and Qwen3 have none")
    n_heads = hf["num_attention_heads"]
    return LlamaConfig(
        family=MODEL_TYPES[model_type],
        vocab_size=hf["vocab_size"],
        context_length=hf["max_position_embeddings"],
        emb_dim=hf["hidden_size"],
        n_heads=n_heads,
        n_kv_groups=hf.get("num_key_value_heads") or n_heads,
        n_layers=hf["num_hidden_layers"],
        hidden_dim=hf["intermediate_size"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        rope_base=float(theta),
        rope_scaling=scaling,
        qk_norm=model_type == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    )


def config_to_hf(cfg: LlamaConfig, dtype: str = "float32") -> dict[str, Any]:
    model_type = {family: kind for kind, family in MODEL_TYPES.items()}[cfg.family]
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_base}
    legacy = None
    if cfg.rope_scaling is not None:
        legacy = {"rope_type": "llama3", "factor": cfg.rope_scaling["factor"],
                  "low_freq_factor": cfg.rope_scaling["low_freq_factor"],
                  "high_freq_factor": cfg.rope_scaling["high_freq_factor"],
                  "original_max_position_embeddings": int(cfg.rope_scaling["original_context_length"])}
        rope = {**legacy, "rope_theta": cfg.rope_base}
    return {
        "architectures": [ARCHITECTURES[cfg.family]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context_length,
        "hidden_size": cfg.emb_dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_groups,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "rope_theta": cfg.rope_base,
        "rope_scaling": legacy,
        "rope_parameters": rope,
        "dtype": dtype,
        "torch_dtype": dtype,
    }


def read_llama(folder: Path, hf: Mapping[str, Any]) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """The LlamaConfig and state dict (gptlit's names) of the Llama 3 or Qwen3 folder whose config.json is ``hf``.

    The tensors are the files' own, memory-mapped, in the files' dtype (bfloat16 for the hub's models). A tied
    head (``tie_word_embeddings``: the files hold no lm_head) is the token embedding's tensor itself. The config
    names the tokenizer: the one a gptlit export records, else the folder's tokenizer.json; ``vocab_used`` is its
    vocabulary where the model's rounds it up (Qwen3: 151,669 ids in 151,936 rows), so that generation never picks
    one of the ids no text encodes to and an export leaves them out, as for gptlit's own models."""
    try:
        config = config_from_hf(hf)
    except KeyError as err:
        raise UserError(f"{folder / hf_folder.CONFIG} lacks {err.args[0]!r}, which a {hf.get('model_type')} config "
                        "holds; download the model again") from None
    except (TypeError, ValueError) as err:
        raise UserError(f"{folder / hf_folder.CONFIG} holds a damaged {hf.get('model_type')} config "
                        f"({str(err).splitlines()[0][:160]}); download the model again") from None
    tensors = hf_folder.read_tensors(folder)
    unknown = sorted(name for name in tensors if ours(name) is None and not name.endswith("rotary_emb.inv_freq"))
    if unknown:
        raise UserError(f"{folder} holds {len(unknown)} tensors that a {config.family} model has no place for (e.g. "
                        f"{unknown[0]}); it is not a plain {ARCHITECTURES[config.family]}")
    state = state_from_hf(tensors)
    if config.tie_embeddings and "tok_emb.weight" in state:
        # One tensor for both, as transformers ties them (an lm_head some files hold anyway is not used).
        state["out_head.weight"] = state["tok_emb.weight"]
    tokenizer = hf.get(TOKENIZER_KEY)  # a gptlit export's: "gpt2" has no tokenizer.json, GPT-2's files serve
    if tokenizer != GPT2 and not (folder / TOKENIZER_FILE).is_file():
        raise UserError(f"{folder} holds no {TOKENIZER_FILE}; gptlit runs a {config.family} model with the tokenizer "
                        "saved beside it: copy the model's tokenizer.json (and tokenizer_config.json) into the folder")
    if tokenizer is None:
        tokenizer = file_fingerprint((folder / TOKENIZER_FILE).read_bytes())
    n_vocab = load_tokenizer(None if tokenizer == GPT2 else folder).n_vocab
    vocab_used = n_vocab if n_vocab < config.vocab_size else None
    return replace(config, tokenizer=str(tokenizer), vocab_used=vocab_used), state
