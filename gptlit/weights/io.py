"""Model weights in and out of files, never unpickling anything but tensors and plain data.

Sources: a Lightning ``.ckpt`` written by training (config and weights), a ``.pth``/``.pt`` state dict (the
book's ``torch.save(model.state_dict(), ...)``, which carries no config), a ``.safetensors`` file (exported
ones carry their config in the metadata), a GPT-2 name (``gpt2`` ... ``gpt2-xl``), or a Hugging Face folder or hub
id of a GPT-2 (see gptlit.weights.gpt2), Llama 3 or Qwen3 model (gptlit.weights.hf_llama).

GPT-2's weights are copied into a GPTModel as they always were. A Llama 3 or Qwen3 model is built on the meta
device, which allocates nothing, and handed the tensors read (assign_weights): those of safetensors files are
memory-mapped, so a model loads in about its own size of memory, not twice it.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
import zlib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from gptlit.weights import gpt2, hf_folder, hf_llama
from gptlit.errors import UserError
from gptlit.files import atomic_path, atomic_write
from gptlit.core.families import ModelConfig, model_config
from gptlit.core.llama import LlamaConfig, LlamaModel
from gptlit.core.model import GPTModel, same_tensor
from gptlit.core.tokenizer import TOKENIZER_FILE, file_fingerprint

log = logging.getLogger(__name__)

# conf/model/, beside the package in a checkout: its files name the `model=` that a weights file fits.
MODEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"
SIZE_KEYS = ("emb_dim", "n_heads", "n_layers")


def model_sizes(folder: Path = MODEL_CONFIG_DIR) -> dict[str, dict[str, int]]:
    """{name: {emb_dim, n_heads, n_layers}} of each conf/model/<name>.yaml (empty where there is no conf/)."""
    import yaml  # PyYAML, which Hydra brings; plain YAML only: these keys are literals

    sizes = {}
    for path in sorted(folder.glob("*.yaml")):
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        # GPT-2's sizes only: a state dict without a config (the book's model.pth) is always GPT-2's.
        if config.get("family", "gpt2") == "gpt2" and all(isinstance(config.get(k), int) for k in SIZE_KEYS):
            sizes[path.stem] = {k: config[k] for k in SIZE_KEYS}
    return sizes
GPT2_VOCAB_SIZE = 50257
CONFIG_METADATA_KEY = "gptlit.config"
# "true" when the output head is the token embedding: the file stores the tensor once, loading ties them again.
TIED_METADATA_KEY = "gptlit.tied_head"
# CRC-32 of the tensors' bytes, in name order, so damage inside the data (which safetensors cannot notice) is.
CHECKSUM_METADATA_KEY = "gptlit.crc32"
WEIGHT_SUFFIXES = (".ckpt", ".pth", ".pt", ".safetensors")


@dataclass
class Weights:
    state: dict[str, torch.Tensor]  # the model's names (GPTModel's without the book's mask buffers, LlamaModel's)
    config: ModelConfig | None  # None when the file does not say (a bare state dict)
    source: str
    # What a training checkpoint says of its run besides the weights: global_step, tokens_seen and the
    # evaluations (history), read for model cards; empty for other sources.
    run: dict[str, Any] = field(default_factory=dict)
    # The folder holding the tokenizer.json the weights were trained with, where they came with it (a Hugging Face
    # folder or download); None for other sources.
    tokenizer: Path | None = None

    @property
    def tied(self) -> bool:
        """The output head shares the token embedding's storage (GPT-2, and models trained from it)."""
        return same_tensor(self.state.get("out_head.weight"), self.state.get("tok_emb.weight"))

    @property
    def context_length(self) -> int:
        if "pos_emb.weight" not in self.state and self.config is not None:
            return self.config.context_length  # rotary positions: no table to count
        return self.state["pos_emb.weight"].shape[0]


# Files whose checksums were verified in this process, by (path, size, mtime): a resume reads its checkpoint
# twice (gptlit's checks, then Lightning's restore) and need not verify it twice.
_verified: set[tuple[str, int, int]] = set()


def _verify_zip_checksums(path: Path) -> None:
    """torch.save writes a zip archive with a CRC-32 per record, which torch.load never checks: a byte changed
    inside a tensor loads silently. Checking them reads the file once more, at about 1.5 GB/s."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified or not zipfile.is_zipfile(path):
        return  # a cut-off archive is no zip at all: torch.load reports it; the legacy format has no checksums
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise UserError(f"checkpoint {path} is damaged ({str(err).splitlines()[0][:120]}); use another copy of it or "
                        "an earlier checkpoint") from None
    if bad is not None:
        raise UserError(f"checkpoint {path} is damaged: its record {bad} does not match its checksum; use another "
                        "copy of it or an earlier checkpoint")
    _verified.add(key)


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint or torch state dict, its checksums verified, loaded with weights_only=True onto
    the CPU.

    ``mmap`` maps the tensors' bytes instead of reading them into memory (files of torch's zip format, the
    default since torch 1.6): a resume checks the checkpoint before Lightning restores it, without a second copy."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist or is not a file; pass the path of a {'/'.join(WEIGHT_SUFFIXES)} file")
    _verify_zip_checksums(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
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


def tensors_crc32(state: Mapping[str, torch.Tensor]) -> str:
    crc = 0
    for name in sorted(state):
        crc = zlib.crc32(state[name].detach().cpu().contiguous().view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


def _stored_config(stored: Any, source: str) -> ModelConfig:
    try:
        # Its family key says which model it is (none: GPT-2, as every config written before the others).
        return model_config(json.loads(stored) if isinstance(stored, str) else stored)
    except (ValueError, TypeError) as err:  # UserError and json's JSONDecodeError are ValueErrors
        raise UserError(f"{source} holds a damaged model config ({str(err).splitlines()[0][:160]})") from None


def _read_safetensors(path: Path) -> Weights:
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})") from None
    if CHECKSUM_METADATA_KEY in metadata and tensors_crc32(state) != metadata[CHECKSUM_METADATA_KEY]:
        raise UserError(f"{path} is damaged: its tensors do not match the checksum it was written with; use another "
                        "copy of it or export it again")
    config = _stored_config(metadata[CONFIG_METADATA_KEY], str(path)) if CONFIG_METADATA_KEY in metadata else None
    if metadata.get(TIED_METADATA_KEY) == "true" and "tok_emb.weight" in state:
        state["out_head.weight"] = state["tok_emb.weight"]  # one tensor, so load_weights ties the head again
    return Weights(_clean(state, str(path)), config, str(path))


def check_values(weights: Weights) -> Weights:
    """Refuse weights that are not floating point, or that hold a NaN or an infinity (a diverged run, a damaged
    file): they would be cast silently, or crash sampling later with a torch traceback."""
    for name, tensor in weights.state.items():
        if not tensor.is_floating_point():
            raise UserError(
                f"{weights.source}: tensor {name} holds {str(tensor.dtype).removeprefix('torch.')} values; model weights "
                "must be floating point (float32, bfloat16 or float16)"
            )
        # In parts of 1M values: isfinite's temporaries for Llama 3.2 1B's embedding at once would be 1.3 GB.
        if all(torch.isfinite(part).all() for part in tensor.reshape(-1).split(1 << 20)):
            continue
        finite = torch.isfinite(tensor)
        if not finite.all():
            bad = finite.numel() - int(finite.sum())
            raise UserError(
                f"{weights.source}: tensor {name} holds {bad} NaN or infinite value{'s' if bad > 1 else ''} (of "
                f"{finite.numel()}); these weights are damaged or come from a run that diverged: use an earlier checkpoint"
            )
    return weights


def _lightning_weights(ckpt: Mapping[str, Any], source: str) -> Weights:
    try:
        stored = ckpt["hyper_parameters"]["model"]
    except (KeyError, TypeError):
        raise UserError(f"{source} is a Lightning checkpoint without a gptlit model config in its hyper-parameters") from None
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    run = {k: ckpt[k] for k in ("global_step", "epoch", "tokens_seen", "history") if k in ckpt}
    return Weights(_clean(state, source), _stored_config(stored, source), source, run)


def read_weights(source: str | Path, mmap: bool = False) -> Weights:
    """The weights of ``source`` (a file, a GPT-2 name or folder) in GPTModel's names, with its config if known;
    checked for damage and for values no model can use (check_values). ``mmap``: see read_checkpoint."""
    return check_values(_read_weights(source, mmap))


def _read_weights(source: str | Path, mmap: bool = False) -> Weights:
    source_str = str(source)
    path = Path(source)
    if not path.is_file() and (path.is_dir() or path.suffix not in WEIGHT_SUFFIXES):
        return _read_model_folder(source_str)
    if not path.is_file():
        raise UserError(
            f"{source_str} does not exist; pass a {'/'.join(WEIGHT_SUFFIXES)} file, a GPT-2 name "
            f"({', '.join(gpt2.GPT2_REPOS)}) or a folder with config.json and model.safetensors"
        )
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    ckpt = read_checkpoint(path, mmap=mmap)
    if isinstance(ckpt, Mapping) and "state_dict" in ckpt:  # a Lightning checkpoint, whatever its suffix
        return _lightning_weights(ckpt, source_str)
    return Weights(_clean(ckpt, source_str), None, source_str)


def _read_model_folder(source: str) -> Weights:
    """A GPT-2 name, or a Hugging Face folder or hub id (downloaded) of a GPT-2, Llama 3 or Qwen3 model."""
    folder = None
    if Path(source).is_dir():
        folder = Path(source)
    elif source not in gpt2.GPT2_REPOS and hf_folder.is_hub_id(source):
        folder = hf_folder.download(source)
    hf = hf_folder.read_config(folder) if folder is not None else None
    if hf is not None and hf.get("model_type") not in ("gpt2", *hf_llama.MODEL_TYPES):
        raise UserError(f"{folder} holds a {hf.get('model_type')!r} model; gptlit runs GPT-2, Llama 3 and Qwen3 "
                        f"(config.json's model_type gpt2, {', '.join(hf_llama.MODEL_TYPES)})")
    if hf is not None and hf.get("model_type") in hf_llama.MODEL_TYPES:
        config, state = hf_llama.read_llama(folder, hf)
        return Weights(state, config, source, tokenizer=_own_tokenizer(folder, config))
    config, state = gpt2.read_gpt2(gpt2.locate(folder if folder is not None else source))
    # One tensor for both, so the model built from them ties its head to the embedding.
    if state["out_head.weight"] is state["tok_emb.weight"] or torch.equal(state["out_head.weight"], state["tok_emb.weight"]):
        state["out_head.weight"] = state["tok_emb.weight"]
    return Weights(state, config, source, tokenizer=_own_tokenizer(folder, config))


def _own_tokenizer(folder: Path | None, config: ModelConfig) -> Path | None:
    """``folder`` where it holds the very tokenizer.json ``config`` was trained with."""
    if folder is None or not (folder / TOKENIZER_FILE).is_file():
        return None
    return folder if file_fingerprint((folder / TOKENIZER_FILE).read_bytes()) == config.tokenizer else None


def read_resume_checkpoint(path: str | Path, mmap: bool = False) -> Weights:
    """The weights and config of a checkpoint a run can resume from: a Lightning checkpoint that holds the
    optimizer state and loop position as well (last.ckpt), never exported or weights-only files."""
    path = Path(path)
    start_instead = f"or start a new run from these weights with init_from={path}"
    if path.suffix == ".safetensors" and path.is_file():
        raise UserError(f"{path} holds exported weights, not a training checkpoint; resume from checkpoints/last.ckpt, "
                        + start_instead)
    ckpt = read_checkpoint(path, mmap=mmap)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise UserError(f"{path} holds bare weights, not a training checkpoint; resume from checkpoints/last.ckpt, "
                        + start_instead)
    if "optimizer_states" not in ckpt:
        raise UserError(f"{path} holds weights only (best.ckpt is saved so), without the optimizer state and position "
                        "a resume needs; resume from checkpoints/last.ckpt, " + start_instead)
    return check_values(_lightning_weights(ckpt, str(path)))


def read_source(ckpt_path: str | Path | None, pretrained: str | Path | None) -> Weights:
    """The weights an entry point names: exactly one of a weights file (ckpt_path=) or a GPT-2 name or folder
    (pretrained=)."""
    if (ckpt_path is None) == (pretrained is None):
        raise UserError("pass exactly one of ckpt_path=path/to/weights and pretrained=gpt2|gpt2-medium|...|/folder")
    return read_weights(ckpt_path if ckpt_path is not None else pretrained)


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


def llama_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What the tensor shapes tell of a Llama 3 or Qwen3 model (not the heads: only their product shows)."""
    try:
        vocab_size, emb_dim = state["tok_emb.weight"].shape
        hidden_dim = state["trf_blocks.0.ff.fc1.weight"].shape[0]
    except (KeyError, ValueError):
        return {}
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("trf_blocks.")}
    return {"vocab_size": vocab_size, "emb_dim": emb_dim, "n_layers": len(blocks), "hidden_dim": hidden_dim,
            "qk_norm": "trf_blocks.0.att.q_norm.weight" in state}


def fitting_model(state: Mapping[str, torch.Tensor]) -> str:
    """The `model=...` overrides that build a model these weights fit, e.g. `model=gpt124m data.context_length=1024`."""
    found = shapes_config(state)
    if not found and llama_shapes(state):
        sizes = " ".join(_override(k, v) for k, v in llama_shapes(state).items())
        return f"a Llama 3 or Qwen3 model with {sizes} (and its heads, which no shape shows)"
    if not found:
        return "no GPTModel config (it lacks tok_emb.weight or pos_emb.weight)"
    for name, sizes in model_sizes().items():
        if found["vocab_size"] == GPT2_VOCAB_SIZE and all(sizes[k] == found[k] for k in ("emb_dim", "n_layers")):
            extra = " model.qkv_bias=true" if found["qkv_bias"] else ""
            return f"model={name} data.context_length={found['context_length']}{extra}"
    sizes = " ".join(f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in found.items() if k != "context_length")
    return f"{sizes} data.context_length={found['context_length']} (no conf/model config has these sizes)"


def _describe(config: ModelConfig) -> str:
    return f"emb_dim={config.emb_dim}, n_layers={config.n_layers}, vocab_size={config.vocab_size}, context_length={config.context_length}"


def check_fits(model: torch.nn.Module, weights: Weights) -> None:
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


# How the model is computed, not what: a resume may switch between the fused kernels and the book's.
RESUME_MAY_CHANGE = {"kernels"}


def _override(key: str, value: Any) -> str:
    # context_length follows data.context_length in the configs; that is the key to set.
    name = "data.context_length" if key == "context_length" else f"model.{key}"
    if isinstance(value, dict):  # Hydra's dict syntax: rope_scaling
        return f"{name}={{{','.join(f'{k}:{v}' for k, v in value.items())}}}"
    return f"{name}={str(value).lower() if isinstance(value, bool) else value}"


def _other_family(config: ModelConfig, weights: Weights, fix: str) -> None:
    if weights.config is not None and weights.config.family != config.family:
        raise UserError(f"{weights.source} holds a {weights.config.family} model, this run's is a {config.family} one "
                        f"(model.family); {fix}")


def check_same_config(config: ModelConfig, weights: Weights) -> None:
    """A resumed run must be the run its checkpoint was written by: any model setting that differs from the one
    stored in the checkpoint (n_heads, drop_rate, ...: not all of them show in tensor shapes) is refused."""
    stored = weights.config
    if stored is None:
        return
    _other_family(config, weights, "a resume continues the same model: pass the model= it was trained with")
    keys = [f.name for f in fields(type(config)) if f.name not in RESUME_MAY_CHANGE
            and getattr(stored, f.name) != getattr(config, f.name)]
    if keys:
        trained = " ".join(_override(k, getattr(stored, k)) for k in keys)
        asked = " ".join(_override(k, getattr(config, k)) for k in keys)
        raise UserError(
            f"{weights.source} was trained with {trained}, this run asks for {asked}; a resume continues the same "
            f"model: pass {trained}, or start a new run from these weights with init_from={weights.source}"
        )


def load_weights(model: GPTModel, weights: Weights) -> GPTModel:
    """Copy ``weights`` into ``model`` once check_fits agrees."""
    check_fits(model, weights)
    model.load_state_dict(weights.state)
    if weights.tied:
        model.out_head.weight = model.tok_emb.weight
    return model


def assign_weights(config: LlamaConfig, weights: Weights, dtype: torch.dtype | None = None) -> LlamaModel:
    """A LlamaModel whose parameters are the tensors of ``weights`` themselves, not copies of them: it is built on
    the meta device, which allocates nothing, and handed them. Read from safetensors, they are the files'
    memory-mapped bytes. ``dtype`` converts them (training takes float32), one at a time; None keeps the file's."""
    with torch.device("meta"):
        model = LlamaModel(config)
    check_fits(model, weights)
    converted: dict[int, torch.Tensor] = {}  # one conversion of a tensor stored under two names (a tied head)
    for tensor in weights.state.values():
        if id(tensor) not in converted:
            converted[id(tensor)] = tensor if dtype is None else tensor.to(dtype)
    state = {name: converted[id(tensor)] for name, tensor in weights.state.items()}
    if config.tie_embeddings:
        state["out_head.weight"] = state["tok_emb.weight"]
    elif same_tensor(state["out_head.weight"], state["tok_emb.weight"]):
        state["out_head.weight"] = state["out_head.weight"].clone()  # a model of two matrices: each its own
    model.load_state_dict(state, assign=True)
    if config.tie_embeddings:  # assigning replaced the shared parameter by two
        model.out_head.weight = model.tok_emb.weight
    model.reset_rope(model.tok_emb.weight.device)
    return model


def model_from_weights(weights: Weights, config: ModelConfig | Mapping[str, Any] | None = None) -> torch.nn.Module:
    """The model holding ``weights``: built from the file's own config, else from ``config`` (model=...). A Llama 3
    or Qwen3 model keeps the file's dtype (bfloat16 for the hub's) and takes the tensors without a copy."""
    if weights.config is None and config is None:
        raise UserError(
            f"{weights.source} holds weights without a model config; say which model it is, "
            f"e.g. {fitting_model(weights.state)}"
        )
    config = model_config(weights.config if weights.config is not None else config)
    if isinstance(config, LlamaConfig):
        return assign_weights(config, weights)
    model = GPTModel(config)
    return load_weights(model, weights)


def model_from_checkpoint(path: str | Path) -> GPTModel:
    """The GPTModel saved in a gptlit Lightning checkpoint (or any source that carries its config)."""
    return model_from_weights(read_weights(path))


def init_model(config: ModelConfig | Mapping[str, Any], source: str | Path) -> torch.nn.Module:
    """A model of ``config`` for training, starting from the weights of ``source`` (init_from=).

    The architecture is the config's; for GPT-2, two settings follow the weights: a position table longer than
    ``context_length`` is cropped to its first rows (OpenAI's 1024 positions trained at 256), and
    ``qkv_bias`` is whatever the weights hold (True for OpenAI's). For Llama 3 and Qwen3 see _init_llama.
    """
    config = model_config(config)
    weights = read_weights(source)
    # A bare state dict (.pth) does not say; every other source does.
    trained_with = weights.config.tokenizer if weights.config is not None else config.tokenizer
    if trained_with != config.tokenizer:
        raise UserError(f"{weights.source} was trained with the tokenizer {trained_with}, this run's is {config.tokenizer}; "
                        "start from weights of the same tokenizer, or set tokenizer.path to the one they were trained with")
    _other_family(config, weights, "choose a model= of its family and sizes")
    if isinstance(config, LlamaConfig):
        return _init_llama(config, weights)
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


# What no tensor shape shows of a Llama 3 or Qwen3 model, or what a different value of changes every output:
# continued pretraining must use the weights' own.
LLAMA_ARCHITECTURE = ("n_heads", "n_kv_groups", "head_dim", "rope_base", "rope_scaling", "qk_norm", "tie_embeddings",
                      "norm_eps", "emb_dim", "n_layers", "hidden_dim")


def _init_llama(config: LlamaConfig, weights: Weights) -> LlamaModel:
    """Continued pretraining of a Llama 3 or Qwen3 model: the architecture must be the weights' (what differs is
    refused, naming the overrides that fix it), the context may be shorter than theirs (rotary positions need
    no table), ``vocab_size`` follows the weights' rows (the tokenizer's rounding may differ from theirs: Qwen3 has
    151,936 for 151,669 ids), and the parameters are float32, as training keeps them."""
    stored = weights.config
    if stored is not None:
        keys = [k for k in LLAMA_ARCHITECTURE if getattr(stored, k) != getattr(config, k)]
        if keys:
            theirs = " ".join(_override(k, getattr(stored, k)) for k in keys)
            asked = " ".join(_override(k, getattr(config, k)) for k in keys)
            raise UserError(f"{weights.source} is a model with {theirs}, this run asks for {asked}; pass {theirs}")
        if config.context_length > stored.context_length:
            raise UserError(f"context_length {config.context_length} exceeds the {stored.context_length} positions "
                            f"{weights.source} was trained for; use data.context_length={stored.context_length} or less")
    rows = weights.state["tok_emb.weight"].shape[0] if "tok_emb.weight" in weights.state else config.vocab_size
    if rows != config.vocab_size:
        if rows < (config.vocab_used or config.vocab_size):
            raise UserError(f"{weights.source} embeds {rows} token ids, fewer than the tokenizer's "
                            f"{config.vocab_used or config.vocab_size}; start from weights of this tokenizer")
        log.info("Setting vocab_size=%d, the rows of the token embedding of %s", rows, weights.source)
        config = replace(config, vocab_size=rows)
    return assign_weights(config, weights, dtype=torch.float32)


def book_state_dict(model: GPTModel | LlamaModel) -> dict[str, torch.Tensor]:
    """The state dict the book's model loads strictly. GPT-2: ours plus the per-layer causal mask buffers of the
    book's GPTModel. Llama 3 and Qwen3: ours as it is, which are the names of llms_from_scratch.llama3's
    Llama3Model (its Qwen3Model calls each RMSNorm's weight ``scale``: docs/families.md)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if model.cfg.family != "gpt2":
        return state
    n = model.cfg.context_length
    mask = torch.triu(torch.ones(n, n), diagonal=1)
    for i in range(model.cfg.n_layers):
        state[f"trf_blocks.{i}.att.mask"] = mask
    return state


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in a state dict or checkpoint (nested dicts and lists): about the size of its file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_safetensors(model: GPTModel, path: str | Path) -> Path:
    """``model.safetensors`` with the config in its metadata, so it loads without naming a model. A head tied to
    the token embedding is stored once and tied again on loading (safetensors refuses tensors that share memory)."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(model.cfg.to_dict())}
    if model.tied_head:
        del state["out_head.weight"]
        metadata[TIED_METADATA_KEY] = "true"
    metadata[CHECKSUM_METADATA_KEY] = tensors_crc32(state)
    # save_file writes from the tensors' memory; save() would build the file in memory twice over first
    # (1.3 GB more at the end of a 124M run, 12 GB for the 1.5B model).
    with atomic_path(path, size_hint=tensor_bytes(state)) as tmp:
        save_file(state, tmp, metadata=metadata)
    return path


def save_book_pth(model: GPTModel | LlamaModel, path: str | Path) -> Path:
    """``model.pth``: a plain state dict, loadable by the book's model of its family (and by ours)."""
    path = Path(path)
    state = book_state_dict(model)
    with atomic_write(path, size_hint=tensor_bytes(state)) as f:
        torch.save(state, f)
    return path
