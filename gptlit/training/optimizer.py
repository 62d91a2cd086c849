"""AdamW built from the model, with the choice of which parameters weight decay pulls towards zero.

The book decays every parameter (``torch.optim.AdamW(model.parameters(), weight_decay=0.1)``). Pretraining
codebases decay only the weights that multiply activations: a norm's scale decayed towards 0 or a bias towards
0 is a prior nobody wants, and decaying an embedding row only ever touches the rows of tokens in the batch.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from gptlit.errors import UserError

DECAY_CHOICES = {
    "all": "every parameter, as the book does",
    "matrices": "only the weights of linear layers (not norms, biases or embeddings)",
    "ndim2": "every 2-D tensor, embeddings included: nanoGPT's and llm.c's rule",
}


def check_rate(key: str, value: object, positive: bool) -> None:
    """A learning rate (positive) or a weight decay (non-negative), as a one-line error naming the setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
        raise UserError(f"{key} must be {'a positive' if positive else 'a non-negative'} number, got {value!r}")


def decayed(module: nn.Module, name: str, decay: str) -> bool:
    if decay == "all":
        return True
    if decay == "matrices":
        return isinstance(module, nn.Linear) and name == "weight"
    # ndim2; FSDP's flat shards have lost their shape, but every 2-D tensor of GPTModel is a weight of a
    # linear layer or an embedding table.
    return name == "weight" and isinstance(module, (nn.Linear, nn.Embedding))


def parameter_groups(model: nn.Module, weight_decay: float, decay: str) -> list[dict]:
    """Two groups, decayed and not, each in the model's parameter order, each parameter in one of them: a head
    tied to the token embedding is one tensor, which counts as the embedding (the name it is met under first)."""
    with_decay, without = [], []
    for full_name, param in model.named_parameters():  # a shared tensor is yielded once
        owner, _, name = full_name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        (with_decay if decayed(module, name, decay) else without).append(param)
    groups = [{"params": with_decay, "weight_decay": weight_decay}, {"params": without, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` given the model (or its parameters) and ``decay``, one of DECAY_CHOICES.

    With ``decay="all"`` the parameters form one group in the model's order, exactly what
    ``torch.optim.AdamW(model.parameters(), ...)`` builds, so the book's runs and older checkpoints are unchanged.
    """

    def __init__(
        self,
        params: nn.Module | Iterable[nn.Parameter] | Iterable[dict],
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        decay: str = "all",
        **kwargs,
    ):
        check_rate("optimizer.lr", lr, positive=True)
        check_rate("optimizer.weight_decay", weight_decay, positive=False)
        if decay not in DECAY_CHOICES:
            choices = "; ".join(f"{k}: {v}" for k, v in DECAY_CHOICES.items())
            raise UserError(f"optimizer.decay must be one of all, matrices, ndim2 ({choices}), got {decay!r}")
        if isinstance(params, nn.Module):
            params = params.parameters() if decay == "all" else parameter_groups(params, weight_decay, decay)
        elif decay != "all":
            raise ValueError(f"decay={decay!r} needs the model, to tell its matrices from its other parameters")
        super().__init__(params, lr=lr, weight_decay=weight_decay, **kwargs)
        self.decay = decay
