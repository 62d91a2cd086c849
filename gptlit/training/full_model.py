"""The whole trained model on one process, also when the weights are sharded across processes (FSDP).

Under FSDP each rank holds a shard of every weight; a forward pass or ``state_dict()`` on one rank alone waits
forever for the others. ``full_model`` is a collective step: every rank calls it, the strategy gathers the full
state dict onto global rank zero, and the callbacks that sample or export do their single-process work there.
"""

from __future__ import annotations

import lightning as L
import torch

from gptlit.core.families import build_model
from gptlit.core.model import GPTModel, same_tensor
from gptlit.training.module import GPTLitModule


def full_model(trainer: L.Trainer, pl_module: GPTLitModule) -> GPTModel | None:
    """Call on every rank. On global rank zero, a GPTModel holding the full weights; None on the other ranks.

    Where each rank holds the whole model (one device, DDP) it is the module's own model, untouched. Where the
    strategy shards the weights, its full-state-dict gather (FSDP: onto rank zero, in CPU memory) fills a copy.
    """
    # Every rank takes part: under FSDP this is the collective gather; elsewhere a view of the live weights.
    state = trainer.strategy.lightning_module_state_dict()
    if not trainer.is_global_zero:
        return None
    state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    model = pl_module.model
    if same_tensor(state["tok_emb.weight"], model.tok_emb.weight):
        return model  # a view of the live weights: nothing was gathered
    # Built on the meta device and given the gathered tensors: no random initial weights drawn (the global
    # generator drives training's dropout) and no second copy of the weights made.
    with torch.device("meta"):
        copy = build_model(model.cfg)
    copy.load_state_dict(state, assign=True)
    if torch.equal(state["out_head.weight"], state["tok_emb.weight"]):
        copy.out_head.weight = copy.tok_emb.weight  # the gather copies a tied weight under each name
    return copy.train(model.training)
