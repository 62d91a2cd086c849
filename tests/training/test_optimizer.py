"""Which parameters AdamW decays, each parameter in exactly one group, for tied and untied models."""

from __future__ import annotations

import pytest
import torch

from gptlit.core.llama import LlamaConfig, LlamaModel
from gptlit.core.model import GPTConfig, GPTModel
from gptlit.errors import UserError
from gptlit.training.optimizer import AdamW

TINY_GPT = dict(vocab_size=100, context_length=16, emb_dim=16, n_heads=2, n_layers=2, qkv_bias=True)
TINY_LLAMA = dict(family="qwen3", vocab_size=100, context_length=16, emb_dim=16, n_heads=2, n_kv_groups=1,
                  n_layers=2, hidden_dim=32, qk_norm=True)


def gpt(tied: bool) -> GPTModel:
    model = GPTModel(GPTConfig(**TINY_GPT))
    if tied:  # GPT-2's own weights tie them; init_from=gpt2 trains such a model
        model.out_head.weight = model.tok_emb.weight
    return model


MODELS = {"gpt2": lambda: gpt(False), "gpt2-tied": lambda: gpt(True),
          "qwen3-tied": lambda: LlamaModel(LlamaConfig(**TINY_LLAMA)),
          "qwen3-untied": lambda: LlamaModel(LlamaConfig(**TINY_LLAMA, tie_embeddings=False))}


@pytest.mark.parametrize("decay", ["all", "matrices", "ndim2"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_is_in_one_group_once(name, decay):
    model = MODELS[name]()
    optimizer = AdamW(model, lr=1e-3, weight_decay=0.1, decay=decay)  # torch refuses a tensor in two groups
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters()) and len(grouped) == len(set(grouped))
    decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[i] for i in decayed}
    if decay == "all":
        assert decayed == {id(p) for p in model.parameters()}
    elif decay == "matrices":
        # Linear layers' weights only: not the embedding (which a tied head is), not norms, not biases.
        assert decayed_names == {n for n, p in model.named_parameters() if p.ndim == 2 and "emb" not in n}
    else:
        assert decayed_names == {n for n, p in model.named_parameters() if p.ndim == 2}


def test_a_tied_tensor_is_updated_once_per_step():
    model = gpt(True)
    optimizer = AdamW(model, lr=0.1, weight_decay=0.0, decay="ndim2")
    before = model.tok_emb.weight.detach().clone()
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    # AdamW's first step moves every element with a gradient by lr (its normalised update is +-1): once, not twice.
    moved = (model.tok_emb.weight.detach() - before).abs()
    assert torch.allclose(moved[moved > 0], torch.tensor(0.1), atol=1e-5)


@pytest.mark.parametrize("key, value", [("lr", 0), ("lr", "abc"), ("weight_decay", -1)])
def test_bad_rates_are_one_line_errors(key, value):
    with pytest.raises(UserError, match=f"optimizer.{key}"):
        AdamW(gpt(False), **{"lr": 1e-3, "weight_decay": 0.1, key: value})
