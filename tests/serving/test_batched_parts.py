"""The serving engine's batched parts against their one-at-a-time counterparts: prompts prefilled together
leave each slot as a lone prefill leaves it, and the server's output head computes the model's logits."""

from __future__ import annotations

import pytest
import torch

from gptlit.serving.output_head import CANDIDATE_BLOCKS, OutputHead
from gptlit.serving.slot_cache import SlotCache
from tests.serving.serving_parts import tiny_model

PROMPTS = [[464, 3290, 318, 257], [40, 550, 1464, 1807, 3619, 402, 271, 10899, 2138], [13]]


@torch.inference_mode()
def test_prompts_prefilled_together_fill_their_slots_as_alone():
    model = tiny_model(seed=5, context_length=64)
    alone, together = SlotCache(model, 4), SlotCache(model, 4)
    lone_features = [model.features(torch.tensor([p]), cache=alone.prefill(slot))[0, -1]
                     for slot, p in enumerate(PROMPTS, start=1)]
    width = max(map(len, PROMPTS))
    starts = [width - len(p) for p in PROMPTS]
    padded = torch.tensor([[0] * s + p for s, p in zip(starts, PROMPTS)])
    features = model.features(padded, cache=together.prefill_padded(1, starts))[:, -1]
    assert together.lengths == alone.lengths == [0, 4, 9, 1]
    torch.testing.assert_close(features, torch.stack(lone_features), rtol=0, atol=1e-5)
    for slot, prompt in enumerate(PROMPTS, start=1):
        n = len(prompt)
        torch.testing.assert_close(together.keys[:, slot, :, :n], alone.keys[:, slot, :, :n], rtol=0, atol=1e-5)
        torch.testing.assert_close(together.values[:, slot, :, :n], alone.values[:, slot, :, :n], rtol=0, atol=1e-5)
    # Decoding on from either cache gives the same next logits: the moved keys sit where decoding reads them.
    nxt = torch.tensor([[7], [8], [9], [10]])
    for cache in (alone, together):
        cache.lengths[0] = 1  # slot 0 holds one (arbitrary) token, so all four rows decode
        cache.keys[:, 0, :, :1] = 0
        cache.values[:, 0, :, :1] = 0
        cache.finite[0] = max(cache.finite[0], 1)
    a = model(nxt, cache=alone.decode(4))
    b = model(nxt, cache=together.decode(4))
    torch.testing.assert_close(a[1:], b[1:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("block", CANDIDATE_BLOCKS)
@torch.inference_mode()
def test_output_head_equals_the_models_head_in_every_layout(block):
    model = tiny_model(seed=2, vocab_size=50304)  # a vocabulary padded past the tokenizer's 50,257 ids
    head = OutputHead(model.out_head.weight, 50257, rows=8, block=block)
    features = torch.randn(8, 32)
    logits = head(features)
    assert logits.shape == (8, 50257)
    torch.testing.assert_close(logits, model.out_head(features)[:, :50257], rtol=0, atol=1e-5)
    # One row is the model's own product, bit for bit, so a lone request computes what generate.py computes.
    assert torch.equal(head(features[:1]), model.out_head(features[:1])[:, :50257])


def test_output_head_measures_its_layout():
    model = tiny_model(seed=2)
    head = OutputHead(model.out_head.weight, 50257, rows=4)
    assert head.block in CANDIDATE_BLOCKS


@pytest.mark.parametrize("family", ["llama3", "qwen3"])
def test_the_engine_serves_llama_and_qwen3_batched_as_alone(family):
    """Grouped-query attention in the slot cache (2 key/value heads for 4 query heads), rotary positions per row:
    requests decoded together get their lone tokens, and alone generate.py's."""
    from gptlit.core.generation import generate
    from gptlit.core.llama import LlamaConfig, LlamaModel
    from gptlit.serving.engine import Engine, Sampling
    from tests.serving.serving_parts import run_engine

    torch.manual_seed(4)
    settings = {"qk_norm": True, "head_dim": 16} if family == "qwen3" else {}
    model = LlamaModel(LlamaConfig(family=family, vocab_size=50257, context_length=64, emb_dim=32, n_heads=4,
                                   n_kv_groups=2, n_layers=2, hidden_dim=64, **settings)).eval()
    with torch.no_grad():  # weights far from their small initial values, so that the tokens vary
        for p in model.parameters():
            p.mul_(8)
    jobs = [(prompt, Sampling(max_tokens=n), at) for prompt, n, at in
            [(PROMPTS[0], 10, 0), (PROMPTS[1], 14, 0), (PROMPTS[2], 6, 2)]]
    engine = Engine(model, max_batch=3)
    together, _ = run_engine(engine, jobs)
    assert engine.stats.largest_prefill == 2 and engine.stats.largest_batch == 3
    alone = [run_engine(Engine(model, max_batch=1), [(p, s, 0)])[0][0] for p, s, _ in jobs]
    assert together == alone and len(set(map(tuple, alone))) == 3
    for (prompt, sampling, _), tokens in zip(jobs, alone):
        reference = generate(model, torch.tensor([prompt]), sampling.max_tokens, 64)[0, len(prompt):].tolist()
        assert tokens == reference
