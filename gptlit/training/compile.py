"""``trainer.compile=true``: the model's forward in training and evaluation steps, compiled by torch.compile.

Only those steps are compiled. Generation (the text sample after each epoch, HellaSwag, generate.py, serve.py)
calls the model itself, eagerly: its KV-cache path changes shapes at every token, which would recompile, and
its decoding loop is not where training spends its time.
"""

from __future__ import annotations

import torch
from torch import nn


class CompiledForward:
    """``model``'s forward through torch.compile's default backend (inductor, on CPUs and GPUs alike).

    Not an nn.Module, unlike what torch.compile returns: that module, assigned to an attribute of the
    LightningModule, would become a second submodule, and every weight would be saved twice, once more under an
    ``_orig_mod.`` name. Held here, the checkpoints of compiled and eager runs have the same keys and load into
    either. The weights stay ``model``'s own; nothing is copied."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._compiled = torch.compile(model)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return self._compiled(idx)
