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

``torch.optim.Muon`` runs its Newton-Schulz iterations in bfloat16, which a GPU or a CPU with bf16 units (AMX,
AVX512-BF16) multiplies fast, but a CPU without them emulates: on an AVX2 EPYC one step of a 9M-parameter
model's matrices took 17 s in bfloat16 and under a second in float32. So the iterations run in the dtype that
multiplies the model's matrices faster on its device, measured once at the first step and then kept in the
optimizer's state (a resume keeps it, bit for bit); ``ns_dtype`` fixes it instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torch.optim._muon import _adjust_lr  # torch's own rate scaling, "original" or "match_rms_adamw"

from gptlit.errors import UserError
from gptlit.planning.flops import measure_matmul_flops
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


NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def orthogonalized(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                   dtype: torch.dtype) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz iteration, in ``dtype``: bit for bit torch's in bfloat16."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1, where the iteration converges
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def fastest_dtype(shape: torch.Size, device: torch.device) -> torch.dtype:
    """bfloat16 or float32, whichever multiplies a Gram matrix of this shape faster here (the planner's timing:
    best of three, after a warm-up, on a generator of its own, so training's random numbers stay untouched)."""
    gram = [(min(shape), max(shape), min(shape), 1)]
    return max((torch.bfloat16, torch.float32),
               key=lambda dtype: measure_matmul_flops(device, dtype, repeats=3, shapes=gram))


class DtypeMuon(torch.optim.Muon):
    """torch.optim.Muon whose Newton-Schulz iterations run in a dtype of one's choosing (its update otherwise
    the same line for line; tests/training/test_muon.py holds it to torch's in bfloat16, bit for bit)."""

    def __init__(self, params, ns_dtype: str = "auto", **kwargs):
        if ns_dtype not in ("auto", *NS_DTYPES):
            raise UserError(f"optimizer.ns_dtype={ns_dtype} is not one of auto, bfloat16, float32")
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        if self.ns_dtype == "auto":
            largest = max((p for group in self.param_groups for p in group["params"]), key=torch.Tensor.numel)
            self.ns_dtype = str(fastest_dtype(largest.shape, largest.device)).removeprefix("torch.")
        dtype = NS_DTYPES[self.ns_dtype]
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            for param, grad, buffer in zip(params, grads, buffers):
                buffer.lerp_(grad, 1 - group["momentum"])
                update = grad.lerp(buffer, group["momentum"]) if group["nesterov"] else buffer
                update = orthogonalized(update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                param.mul_(1 - group["lr"] * group["weight_decay"])
                param.add_(update, alpha=-_adjust_lr(group["lr"], group["adjust_lr_fn"], param.shape))

    def state_dict(self):
        return {**super().state_dict(), "ns_dtype": self.ns_dtype}

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.ns_dtype = state_dict.pop("ns_dtype", self.ns_dtype)
        super().load_state_dict(state_dict)


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
        ns_dtype: str = "auto",
        adamw_lr: float = 0.004,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_weight_decay: float = 0.0,
        adamw_eps: float = 1e-8,
    ):
        """``lr``, ``weight_decay``, ``momentum``, ``nesterov``, ``ns_steps`` and ``adjust_lr_fn`` are Muon's
        (``adjust_lr_fn``: torch's None/"original", which scales the rate by sqrt(max(1, rows / cols)), or
        "match_rms_adamw", which makes the update's size AdamW's); ``ns_dtype`` is the Newton-Schulz iterations' (auto:
        the faster here, measured); the ``adamw_*`` settings are AdamW's, for the
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
        self.muon = DtypeMuon(matrices, ns_dtype=ns_dtype, lr=lr, weight_decay=weight_decay, momentum=momentum,
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
