"""Muon for the hidden matrices, AdamW for everything else, as one optimizer.

Muon (Keller Jordan, 2024; ``torch.optim.Muon``) replaces each 2-D update by the nearest semi-orthogonal matrix
of its momentum (five Newton-Schulz iterations), which lets a matrix learn at a far higher rate than AdamW. It is
defined for matrices that map activations to activations, so the transformer blocks' weights take Muon and the
rest takes AdamW: the token embedding (a lookup, not a map), the output head (its rows are per-token scores),
norm scales and biases (vectors). This is the split of the GPT-2 speedrun and of nanochat. A head tied to the
embedding is one tensor, on AdamW.

Lightning's automatic optimization takes one optimizer, so the two run behind one ``torch.optim.Optimizer``:
its ``param_groups`` are the two optimizers' own group dicts (the scheduler sets each group's rate, each from its
own peak), ``step`` runs both after the one closure, and the state dict holds both states, so a resume restores
them bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gptlit.errors import UserError
from gptlit.training.optimizer import check_rate


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """A transformer block's weight matrix (GPT-2's, Llama 3's and Qwen3's blocks are all ``trf_blocks``)."""
    return name.startswith("trf_blocks.") and param.ndim == 2


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Muon's, AdamW's), each parameter once (a tied head is the embedding), in the model's order."""
    muon, adamw = [], []
    for name, param in model.named_parameters():  # named_parameters yields a shared tensor once
        if not param.requires_grad:
            continue
        if type(param).__name__ in ("FlatParameter", "DTensor"):
            raise UserError("optimizer=muon orthogonalizes whole matrices, and this strategy shards them "
                            "(trainer=fsdp); train with trainer=ddp or one device, or use optimizer=adamw")
        (muon if is_hidden_matrix(name, param) else adamw).append(param)
    return muon, adamw


class MuonAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params: nn.Module,
        lr: float = 0.02,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        adamw_lr: float = 0.004,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_weight_decay: float = 0.0,
        adamw_eps: float = 1e-8,
    ):
        """``lr``, ``weight_decay``, ``momentum``, ``nesterov``, ``ns_steps`` and ``adjust_lr_fn`` are Muon's
        (``adjust_lr_fn``: torch's None/"original", which scales the rate by sqrt(max(1, rows / cols)), or
        "match_rms_adamw", which makes the update's size AdamW's); the ``adamw_*`` settings are AdamW's, for the
        embedding, head, norms and biases."""
        if not isinstance(params, nn.Module):
            raise ValueError("MuonAdamW needs the model, to tell its hidden matrices from its other parameters")
        for key, value in (("lr", lr), ("adamw_lr", adamw_lr)):
            check_rate(f"optimizer.{key}", value, positive=True)
        for key, value in (("weight_decay", weight_decay), ("adamw_weight_decay", adamw_weight_decay)):
            check_rate(f"optimizer.{key}", value, positive=False)
        matrices, others = split_parameters(params)
        if not matrices:
            raise UserError("optimizer=muon found no transformer-block matrices to optimize; use optimizer=adamw")
        self.muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                     nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        self.adamw = torch.optim.AdamW(others, lr=adamw_lr, betas=tuple(adamw_betas), eps=adamw_eps,
                                       weight_decay=adamw_weight_decay)
        # Named, so each group's rate is logged under its name (train/lr_muon, train/lr_adamw).
        self.muon.param_groups[0]["name"] = "muon"
        self.adamw.param_groups[0]["name"] = "adamw"
        super().__init__(matrices + others, {})
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    # The two optimizers hold the real state; Optimizer.__init__ assigns one of its own, which is dropped.
    @property
    def state(self) -> dict[torch.Tensor, Any]:
        return {**self.muon.state, **self.adamw.state}

    @state.setter
    def state(self, value: Any) -> None:
        pass

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise UserError("this checkpoint's optimizer state is not optimizer=muon's; resume with the optimizer the "
                            "run was trained with")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # Loading replaced each optimizer's group dicts: this optimizer's groups must be those again.
        self.param_groups = self.muon.param_groups + self.adamw.param_groups
