"""Activation checkpointing of one transformer block, in place: its forward keeps no activations and the backward
pass runs it again. Shared by training under trainer=fsdp (gptlit/training/fsdp.py) and the planner's probe of
such a step (gptlit/planning/plan.py), so that the probe times what training runs."""

from __future__ import annotations

import torch
from torch import nn


def recompute_in_backward(block: nn.Module) -> None:
    """Make ``block``'s forward keep no activations; the backward pass runs it again. The block stays the same
    module under the same name (a wrapper module would rename every parameter in the state dict). Dropout's
    random numbers are replayed in the recompute and the global generator ends where it would without it."""
    from torch.utils.checkpoint import checkpoint

    forward = block.forward

    def forward_recomputed_in_backward(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)  # evaluation keeps nothing for a backward anyway
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    block.forward = forward_recomputed_in_backward
