"""Model weights in and out of files, never unpickling anything but tensors and plain data."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from gptlit.errors import UserError
from gptlit.model import GPTConfig, GPTModel


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint or torch state dict, loaded with weights_only=True onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist or is not a file; pass the path of a .ckpt file")
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


def model_from_checkpoint(path: str | Path) -> GPTModel:
    """The GPTModel saved in a gptlit Lightning checkpoint, config and weights both taken from the file."""
    ckpt = read_checkpoint(path)
    try:
        config = GPTConfig.from_any(ckpt["hyper_parameters"]["model"])
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    except (KeyError, TypeError):
        raise UserError(f"{path} is not a gptlit training checkpoint (no model config and state_dict in it)") from None
    model = GPTModel(config)
    model.load_state_dict(state)
    return model
