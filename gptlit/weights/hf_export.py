"""A model as a Hugging Face transformers folder: what ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load with no custom code, and so lm-evaluation-harness, vLLM and the hub too.
A GPTModel becomes a ``GPT2LMHeadModel``, a Llama 3 or Qwen3 model a ``LlamaForCausalLM`` or ``Qwen3ForCausalLM``.

The folder holds GPT-2's ``config.json``, ``model.safetensors`` in ``GPT2LMHeadModel``'s names (the inverse of
gptlit.weights.gpt2's mapping), GPT-2's tokenizer files (``vocab.json`` and ``merges.txt`` are the very BPE
files gptlit's tokenizer is built from) and a model card (``README.md``). GPT-2's architecture is GPTModel's
(tanh GELU, LayerNorm eps 1e-5, a 4x feed-forward), so nothing is approximated: a model without
query/key/value biases gets zero biases, an untied head is written as ``lm_head.weight`` with
``tie_word_embeddings: false``.

A Llama 3 or Qwen3 folder holds transformers' config of the family (gptlit.weights.hf_llama.config_to_hf), the
tensors under its names, a ``generation_config.json`` with the end-of-text id, and the tokenizer: GPT-2's or a
trained one as above, or the files of the Hugging Face model it was read from, copied as they are.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from torch import nn

from gptlit.core.llama import LlamaModel
from gptlit.core.model import GPTModel
from gptlit.core.tokenizer import (ENDOFTEXT, TOKENIZER_FILE, HubTokenizer, Tokenizer, TrainedBPE, bpe_files_dir,
                                   load_tokenizer)
from gptlit.errors import UserError
from gptlit.files import usual_permissions
from gptlit import hub
from gptlit.weights import gpt2, hf_llama
from gptlit.weights.gpt2 import TOKENIZER_KEY

CARD = "README.md"
GENERATION_CONFIG = "generation_config.json"
# What a Hugging Face model's folder holds of its tokenizer beside tokenizer.json, copied into an export of it.
HUB_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def gpt2_config(model: GPTModel, tokenizer: Tokenizer) -> dict[str, Any]:
    """transformers' GPT2Config of ``model``, as config.json holds it, with what gptlit reads back beside it: the
    tokenizer's fingerprint and the ids it uses (transformers keeps keys it does not know)."""
    cfg = model.cfg
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": exported_vocab(cfg),
        "n_positions": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,  # 4 * n_embd, as GPTModel's feed-forward
        "activation_function": "gelu_new",  # the tanh approximation GPTModel uses
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "bos_token_id": tokenizer.eot_id,
        "eos_token_id": tokenizer.eot_id,
        "tie_word_embeddings": model.tied_head,
        "torch_dtype": str(model.tok_emb.weight.dtype).removeprefix("torch."),
        "use_cache": True,
        TOKENIZER_KEY: cfg.tokenizer,
    }


def llama_config(model: LlamaModel, tokenizer: Tokenizer) -> dict[str, Any]:
    """transformers' LlamaConfig or Qwen3Config of ``model`` as config.json holds it, with the tokenizer's ids and
    fingerprint (which gptlit reads back)."""
    eos = tokenizer.eot_id
    return {
        **hf_llama.config_to_hf(model.cfg, str(model.tok_emb.weight.dtype).removeprefix("torch.")),
        "vocab_size": exported_vocab(model.cfg),
        "bos_token_id": tokenizer.bos_id if tokenizer.bos_id is not None else eos,
        "eos_token_id": eos,
        "initializer_range": 0.02,
        "use_cache": True,
        TOKENIZER_KEY: model.cfg.tokenizer,
    }


def generation_config(tokenizer: Tokenizer) -> bytes:
    """generation_config.json: the Hugging Face model's own where the tokenizer is one's (its stop ids, its
    sampling settings), else the end-of-text id that generation stops at."""
    if isinstance(tokenizer, HubTokenizer) and (tokenizer.path.parent / GENERATION_CONFIG).is_file():
        return (tokenizer.path.parent / GENERATION_CONFIG).read_bytes()
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eot_id
    return json.dumps({"bos_token_id": bos, "eos_token_id": tokenizer.eot_id}, indent=2).encode()


def exported_vocab(cfg) -> int:
    """The vocabulary an export holds: the ids the tokenizer uses. The padding that rounds vocab_size up for speed
    is left out, so that transformers (which knows nothing of it) never picks a padding id."""
    return cfg.vocab_used or cfg.vocab_size


def tokenizer_files(context_length: int, tokenizer: Tokenizer) -> dict[str, bytes]:
    """The tokenizer as transformers' AutoTokenizer reads it: GPT-2's as OpenAI's encoder.json and vocab.bpe under
    their hub names; a trained one as its tokenizer.json, which PreTrainedTokenizerFast runs with the same ids
    (and which is gptlit's tokenizer.path when the folder is named)."""
    if isinstance(tokenizer, HubTokenizer):
        return hub_tokenizer_files(context_length, tokenizer)
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    if isinstance(tokenizer, TrainedBPE):
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length, **special}
        files = {TOKENIZER_FILE: tokenizer.path.read_bytes()}
    else:
        data = bpe_files_dir()
        config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length, "add_prefix_space": False,
                  **special}
        files = {"vocab.json": (data / "encoder.json").read_bytes(), "merges.txt": (data / "vocab.bpe").read_bytes()}
    return {
        **files,
        "tokenizer_config.json": json.dumps(config, indent=2).encode(),
        "special_tokens_map.json": json.dumps(special, indent=2).encode(),
    }


def hub_tokenizer_files(context_length: int, tokenizer: HubTokenizer) -> dict[str, bytes]:
    """A Hugging Face model's tokenizer files as its folder holds them (a bare tokenizer.json gets a
    tokenizer_config.json naming its special tokens)."""
    folder = tokenizer.path.parent
    files = {TOKENIZER_FILE: tokenizer.path.read_bytes()}
    files |= {name: (folder / name).read_bytes() for name in HUB_TOKENIZER_FILES if (folder / name).is_file()}
    if "tokenizer_config.json" not in files:
        name = tokenizer.backend.id_to_token
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length,
                  "eos_token": name(tokenizer.eot_id),
                  "bos_token": None if tokenizer.bos_id is None else name(tokenizer.bos_id)}
        files["tokenizer_config.json"] = json.dumps(config, indent=2).encode()
    return files


def find_run_config(source: str | Path) -> str | None:
    """The config of the training run that wrote ``source`` (``<run>/checkpoints/*.ckpt`` or
    ``<run>/model.safetensors``), read from the run's ``.hydra/config.yaml``; None elsewhere."""
    path = Path(source)
    if not path.is_file():
        return None
    for run_dir in (path.parent, path.parent.parent):
        config = run_dir / ".hydra" / "config.yaml"
        if config.is_file():
            return config.read_text(encoding="utf-8", errors="replace")
    return None


FAMILY_NAMES = {"llama3": "Llama 3", "qwen3": "Qwen3"}


def _introduction(model: nn.Module, source: str) -> list[str]:
    """The card's header, title and first paragraph: what the model is."""
    cfg = model.cfg
    params = sum(p.numel() for p in model.parameters())
    head = 'output head tied to the token embedding' if model.tied_head else 'separate output head'
    loads = f"exported from `{source}`. It loads with `transformers.AutoModelForCausalLM.from_pretrained`."
    if isinstance(model, LlamaModel):
        name = FAMILY_NAMES[cfg.family]
        tokenizer = "GPT-2's tokenizer" if cfg.tokenizer == "gpt2" else f"the tokenizer {cfg.tokenizer} (tokenizer.json)"
        return [
            "---", "library_name: transformers", "pipeline_tag: text-generation",
            f"tags: [{'llama' if cfg.family == 'llama3' else cfg.family}, gptlit]", "---", "",
            f"# {name}-architecture model from gptlit", "",
            f"A {name} architecture ({params / 1e6:.1f}M parameters: {cfg.n_layers} layers, {cfg.n_heads} query heads "
            f"sharing {cfg.n_kv_groups} key/value heads of {cfg.head_dim}, embedding {cfg.emb_dim}, feed-forward "
            f"{cfg.hidden_dim}, context {cfg.context_length} tokens, {tokenizer}; {head}), {loads}", "",
        ]
    return [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [gpt2, gptlit]", "---", "",
        "# GPT-2-style model trained with gptlit", "",
        f"A GPT-2 architecture ({params / 1e6:.1f}M parameters: {cfg.n_layers} layers, {cfg.n_heads} heads, "
        f"embedding {cfg.emb_dim}, context {cfg.context_length} tokens, GPT-2's tokenizer; {head}"
        f"{'' if cfg.qkv_bias else '; trained without query/key/value biases, exported as zeros'}), {loads}", "",
    ]


def model_card(model: nn.Module, source: str, run: dict[str, Any], run_config: str | None) -> str:
    """A short README.md: what the model is, where it came from, its last losses and its gptlit config."""
    cfg = model.cfg
    lines = _introduction(model, source)
    history = run.get("history") or []
    if history:
        last = history[-1]
        # The checkpoint's own step and tokens: a run can go on for steps after its last evaluation.
        steps, tokens = run.get("global_step", last["step"]), run.get("tokens_seen", last["tokens_seen"])
        lines += ["## Training", "",
                  f"{steps} optimizer steps ({int(tokens):,} tokens). At the last evaluation (step {last['step']}): "
                  f"train loss {last['train_loss']:.3f}, validation loss {last['val_loss']:.3f}.", ""]
    else:
        lines += ["## Training", "", f"`{source}` records no losses (export a training checkpoint to have them here).", ""]
    lines += ["## gptlit model config", "", "```json", json.dumps(cfg.to_dict(), indent=2), "```", ""]
    if run_config:
        lines += ["## The training run's config (`.hydra/config.yaml`)", "", "```yaml", run_config.rstrip(), "```", ""]
    return "\n".join(lines)


def export_model(model: nn.Module, out_dir: str | Path, card: str, overwrite: bool = False,
                 tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model`` as a transformers folder at ``out_dir`` (GPT-2, Llama 3 or Qwen3). The folder is built beside
    it and renamed into place when complete, so a failure leaves no half-written export; an existing folder is
    replaced only with ``overwrite``."""
    out_dir = Path(out_dir)
    tokenizer = tokenizer or load_tokenizer()
    if out_dir.exists() and not (out_dir.is_dir() and overwrite):
        what = "a folder" if out_dir.is_dir() else "a file"
        raise UserError(f"out_dir {out_dir} is already {what}; choose another out_dir"
                        + (" or pass overwrite=true to replace it" if out_dir.is_dir() else ""))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        llama = isinstance(model, LlamaModel)
        config = llama_config(model, tokenizer) if llama else gpt2_config(model, tokenizer)
        (work / "config.json").write_text(json.dumps(config, indent=2))
        state = model.state_dict()
        used = exported_vocab(model.cfg)
        state = {**state, "tok_emb.weight": state["tok_emb.weight"][:used], "out_head.weight": state["out_head.weight"][:used]}
        if llama:
            (work / GENERATION_CONFIG).write_bytes(generation_config(tokenizer))
            tensors = {k: v.detach().cpu().contiguous() for k, v in hf_llama.state_to_hf(state, model.tied_head).items()}
        else:
            tensors = gpt2.to_gpt2(state, model.cfg.n_layers, model.tied_head)
        save_file(tensors, work / "model.safetensors", metadata={"format": "pt"})
        for name, content in tokenizer_files(model.cfg.context_length, tokenizer).items():
            (work / name).write_bytes(content)
        (work / CARD).write_text(card)
        for path in (work, *work.iterdir()):
            usual_permissions(path)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old."))
            out_dir.rename(old / out_dir.name)
            work.rename(out_dir)
            shutil.rmtree(old)
        else:
            work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload an exported folder to the Hugging Face hub as model repository ``repo_id``; returns its URL."""
    if not hub.reachable():
        raise UserError(f"cannot push to {repo_id}: the Hugging Face hub is not reachable (offline); the export in "
                        f"{folder} is complete, push it later with `hf upload {repo_id} {folder}`")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        api.upload_folder(repo_id=repo_id, folder_path=str(folder))
    except Exception as err:  # the hub client raises many kinds (auth, HTTP, connection)
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"could not push {folder} to {repo_id} ({reason}); log in with `hf auth login` "
                        "and check the repository name") from None
    return url
