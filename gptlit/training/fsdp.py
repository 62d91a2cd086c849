"""Fully sharded data parallel training: FSDP2 (``torch.distributed.fsdp.fully_shard``) through Lightning's
``ModelParallelStrategy``, on CUDA GPUs over NCCL and on CPUs over gloo (so CI runs it for real).

Each rank holds a shard of every parameter, gradient and optimizer state; a transformer block's full weights
exist only while that block runs forward or backward. The model is built once: global rank zero builds it
(the seeded initial weights, or ``init_from``'s, exactly as a single process or DDP would), the other ranks build
it on the meta device, which allocates nothing, and rank zero's weights are scattered into the shards. A run is
then DDP's run in arithmetic: the same initial weights, the same batches, gradients averaged over the ranks.

Checkpoints are one file, gathered onto rank zero, in the format a single process writes (optimizer state keyed
by parameter number, not name), so a run resumes under FSDP, DDP or in one process from any of them.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from gptlit.core.recompute import recompute_in_backward


class FullyShardedStrategy(ModelParallelStrategy):
    """FSDP over every rank of the run (data parallel across all of them, no tensor parallelism).

    ``activation_checkpointing`` recomputes each block's activations in the backward pass instead of keeping
    them: less memory for about a third more compute. ``reshard_after_forward`` frees a block's gathered weights
    after its forward (gathering them again for the backward): less memory for more communication."""

    def __init__(self, activation_checkpointing: bool = False, reshard_after_forward: bool = True, **kwargs: Any):
        # One file on rank zero, not a folder of shards: generate.py, export.py and a single process read it.
        kwargs.setdefault("save_distributed_checkpoint", False)
        super().__init__(**kwargs)
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # Lightning's defaults are a tensor-parallel group per node; gptlit shards data-parallel over all ranks.
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def shard(self, model: nn.Module) -> None:
        """Shard ``model`` in place, each transformer block a unit of its own and the rest (embeddings, final
        norm, head) the root's. Rank zero's weights become everyone's. Called on every rank, from the
        LightningModule's ``configure_model``."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(model, FSDPModule):
            return  # configure_model runs again for trainer.validate() after fit()
        full = model.state_dict() if self.global_rank == 0 else {}
        tied = model.out_head.weight is model.tok_emb.weight  # by identity: meta tensors share no storage to compare
        model.to("meta")  # rank zero's weights are kept in `full`; the others' were never allocated
        if tied:
            # Moving to another device makes a new tensor per module, which would untie the head on rank zero
            # alone (built on the meta device, the other ranks' stay tied) and shard different parameters.
            model.out_head.weight = model.tok_emb.weight
        mesh = self.device_mesh["data_parallel"]
        for block in model.trf_blocks:
            if self.activation_checkpointing:
                recompute_in_backward(block)
            fully_shard(block, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        fully_shard(model, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        model.to_empty(device=self.root_device)
        # Rank zero's tensors are broadcast and each rank keeps its shard.
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        if hasattr(model, "reset_rope"):
            model.reset_rope(self.root_device)  # buffers outside the state dict: computed, not broadcast

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The full optimizer state on rank zero, keyed by parameter number as ``Optimizer.state_dict()`` keys it
        (torch's full state dict keys it by parameter name): a single process or DDP resumes from it as from its
        own, and FSDP's loading maps numbers back to names."""
        state = super().optimizer_state(optimizer)
        return numbered(state) if state else state


def shards_weights(trainer) -> bool:
    """Whether ``trainer``'s ranks each hold a shard of the weights: a forward pass then takes every rank."""
    return isinstance(trainer.strategy, FullyShardedStrategy)


def numbered(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter name (FQN) re-keyed by the parameter's number, counted over
    the parameter groups in order, as ``torch.optim.Optimizer.state_dict`` numbers them."""
    number: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = []
        for name in group["params"]:
            number.setdefault(name, len(number))
            ids.append(number[name])
        groups.append({**group, "params": ids})
    return {"state": {number[name]: value for name, value in state["state"].items()}, "param_groups": groups}

