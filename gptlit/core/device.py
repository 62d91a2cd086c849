"""Which device to run on, and where a model lives: one answer for every entry point."""

from __future__ import annotations

import torch
from torch import nn

from gptlit.errors import UserError

DEVICE_TYPES = ("auto", "gpu", "cpu", "cuda", "mps")


def resolve_device_type(accelerator: str = "auto") -> str:
    """The device type Lightning picks for ``accelerator`` (its order for auto: cuda, mps, cpu)."""
    accelerator = str(accelerator).lower()
    if accelerator in ("auto", "gpu"):
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return accelerator


def why_unavailable(name: str) -> str | None:
    """Why this machine cannot run on device type ``name`` (Lightning's accelerator names), or None if it can."""
    kind = str(name).split(":")[0].lower()
    if kind == "gpu" and resolve_device_type(kind) == "cpu":
        return "torch sees no GPU on this machine (neither CUDA nor MPS; a CPU-only torch build sees none either)"
    if kind == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA GPU on this machine (a CPU-only torch build sees none either)"
    if kind == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available here"
    return None


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a named device that this machine lacks is a UserError."""
    kind = resolve_device_type(name.split(":")[0])
    missing = why_unavailable(name)
    if missing:
        raise UserError(f"device={name} was asked for, but {missing}; use device=auto or device=cpu")
    if kind not in DEVICE_TYPES:
        raise UserError(f"device={name} is not a device; use one of {', '.join(DEVICE_TYPES)} (or cuda:N)")
    return torch.device(name if ":" in name else kind)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock measures it (CUDA and MPS run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def precision_dtype(precision: str | int) -> torch.dtype:
    """The dtype the matmuls of a step run in under a Lightning precision setting."""
    text = str(precision)
    if text.startswith("bf16"):
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    return torch.float32

