"""A Hugging Face model as files: a folder written by transformers' ``save_pretrained``, or a hub repository
(``Qwen/Qwen3-0.6B``) downloaded into the hub's cache, and its weights read without a copy.

A folder holds ``config.json``, the weights as one ``model.safetensors`` or as shards listed by
``model.safetensors.index.json``, and the tokenizer (``tokenizer.json`` beside ``tokenizer_config.json`` and
``generation_config.json``). safetensors maps a file into memory and its tensors are views of the mapping (a
private one: a tensor changed in training never writes to the file), so reading the weights costs address space,
not memory; their pages are read from disk as they are first used, and stay in the page cache the system may
reclaim.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from gptlit import hub
from gptlit.errors import UserError

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# What a download fetches: the model and its tokenizer, not the other formats a repository may hold as well
# (Meta's original/consolidated.pth, ONNX, GGUF, ...), which can be as large as the model again.
DOWNLOADED = [CONFIG, "generation_config.json", "*.safetensors", INDEX, "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt"]
# A hub repository id: owner/name, each of letters, digits, '-', '_' and '.'.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(source: str) -> bool:
    return HUB_ID.fullmatch(source) is not None and not Path(source).exists()


def download(repo_id: str) -> Path:
    """The local folder of hub repository ``repo_id``: downloaded (the model and tokenizer files only) when the hub
    is reachable and HF_HUB_OFFLINE is not set, else what the hub's cache already holds; anything else is one line
    saying so."""
    from huggingface_hub import constants, snapshot_download

    online = not constants.HF_HUB_OFFLINE and hub.reachable()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=DOWNLOADED, local_files_only=not online))
    except Exception as err:  # the hub client raises many kinds (HTTP, gated repositories, cache misses)
        reason = "offline" if not online else ((str(err).splitlines() or [type(err).__name__])[0][:200])
        raise UserError(
            f"{repo_id} is no folder here, and could not be downloaded from the Hugging Face hub ({reason}); connect to "
            "the internet (gated models, as meta-llama's, also need `hf auth login` and their license accepted), or "
            "pass the folder holding its config.json, *.safetensors and tokenizer.json"
        ) from None


def read_config(folder: Path) -> dict[str, Any] | None:
    """``config.json`` of ``folder``; None where there is none."""
    path = folder / CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON, bytes that are not UTF-8
        raise UserError(f"{path} is not readable JSON ({str(err).splitlines()[0]}); download the model again") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a model config (a JSON object); download the model again")
    return config


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of ``folder``: its model.safetensors, or the shards its index lists."""
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    if not (folder / INDEX).is_file():
        raise UserError(f"{folder} holds no {SINGLE} nor {INDEX}; pass a folder written by transformers' "
                        "save_pretrained (gptlit reads safetensors weights only, never pickled .bin files)")
    try:
        weight_map = json.loads((folder / INDEX).read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{folder / INDEX} is damaged ({type(err).__name__}: {err}); download the model again") from None
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder} lacks {len(missing)} of the {len(names)} weight files its {INDEX} lists "
                        f"(e.g. {missing[0]}); download the model again")
    return [folder / name for name in names]


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``folder``'s safetensors files by name, memory-mapped (no copy in memory)."""
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        try:
            with safe_open(path, "pt") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        except (SafetensorError, OSError) as err:
            raise UserError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]}); download the "
                            "model again") from None
    return tensors
