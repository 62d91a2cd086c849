"""Llama 3 and Qwen3 against their references: the book's llms_from_scratch.llama3 / qwen3 models and
transformers' LlamaForCausalLM / Qwen3ForCausalLM, on shared random weights, and the KV cache against the
uncached loop."""

from __future__ import annotations

import pytest
import torch

from gptlit.core.families import build_model, model_config
from gptlit.core.generation import generate
from gptlit.core.llama import LlamaConfig, LlamaModel, rope_frequencies
from gptlit.errors import UserError
from gptlit.weights.hf_llama import config_to_hf, state_from_hf, state_to_hf

SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 16}
LLAMA = dict(family="llama3", vocab_size=300, context_length=64, emb_dim=64, n_heads=4, n_kv_groups=2, n_layers=2,
             hidden_dim=96, rope_base=500_000.0, rope_scaling=SCALING, tie_embeddings=True, norm_eps=1e-5)
QWEN = dict(family="qwen3", vocab_size=300, context_length=64, emb_dim=64, n_heads=4, n_kv_groups=2, n_layers=2,
            hidden_dim=96, head_dim=32, rope_base=1_000_000.0, qk_norm=True, tie_embeddings=True, norm_eps=1e-6)


def random_model(settings: dict, seed: int = 0) -> LlamaModel:
    """Weights far from their initial values (norm scales too), so that a swapped or mis-scaled tensor shows."""
    torch.manual_seed(seed)
    model = LlamaModel(LlamaConfig(**settings)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    return model


def tokens(batch: int = 2, n: int = 40, vocab: int = 300, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def book_config(cfg: LlamaConfig) -> dict:
    return {"vocab_size": cfg.vocab_size, "context_length": cfg.context_length, "emb_dim": cfg.emb_dim,
            "n_heads": cfg.n_heads, "n_layers": cfg.n_layers, "hidden_dim": cfg.hidden_dim, "head_dim": cfg.head_dim,
            "qk_norm": cfg.qk_norm, "n_kv_groups": cfg.n_kv_groups, "rope_base": cfg.rope_base,
            "dtype": torch.float32,
            "rope_freq": None if cfg.rope_scaling is None else {
                **{k: cfg.rope_scaling[k] for k in ("factor", "low_freq_factor", "high_freq_factor")},
                "original_context_length": cfg.rope_scaling["original_context_length"]}}


@torch.no_grad()
def test_llama3_equals_the_books_llama3():
    from llms_from_scratch.llama3 import Llama3Model

    ours = random_model(LLAMA)
    book = Llama3Model(book_config(ours.cfg)).eval()
    book.load_state_dict(ours.state_dict())  # the book's names, nn.RMSNorm's "weight" included
    idx = tokens()
    torch.testing.assert_close(ours(idx), book(idx), rtol=0, atol=1e-4)


@torch.no_grad()
def test_qwen3_equals_the_books_qwen3():
    from llms_from_scratch.qwen3 import Qwen3Model

    ours = random_model(QWEN)
    book = Qwen3Model(book_config(ours.cfg)).eval()
    # The book's Qwen3 RMSNorm calls its weight "scale".
    book.load_state_dict({k.replace("norm.weight", "norm.scale").replace("norm1.weight", "norm1.scale")
                          .replace("norm2.weight", "norm2.scale"): v for k, v in ours.state_dict().items()})
    idx = tokens()
    torch.testing.assert_close(ours(idx), book(idx), rtol=0, atol=1e-4)


def transformers_model(ours: LlamaModel):
    import transformers

    hf_config = config_to_hf(ours.cfg)
    kind = {"llama3": transformers.LlamaConfig, "qwen3": transformers.Qwen3Config}[ours.cfg.family]
    model_class = {"llama3": transformers.LlamaForCausalLM, "qwen3": transformers.Qwen3ForCausalLM}[ours.cfg.family]
    config = kind(**{k: v for k, v in hf_config.items() if k not in ("architectures", "model_type", "torch_dtype")})
    model = model_class(config).eval()
    missing, unexpected = model.load_state_dict(state_to_hf(ours.state_dict(), ours.tied_head), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return model


@pytest.mark.parametrize("settings", [LLAMA, QWEN], ids=["llama3", "qwen3"])
@torch.no_grad()
def test_equals_transformers(settings):
    ours = random_model(settings)
    theirs = transformers_model(ours)
    idx = tokens()
    torch.testing.assert_close(ours(idx), theirs(idx).logits, rtol=0, atol=1e-4)
    # And back: transformers' tensors give gptlit's names for every tensor.
    assert set(state_from_hf(theirs.state_dict())) == set(ours.state_dict())


@pytest.mark.parametrize("settings", [LLAMA, QWEN], ids=["llama3", "qwen3"])
@torch.no_grad()
def test_greedy_text_is_the_same_with_and_without_the_cache_and_in_transformers(settings):
    ours = random_model(settings)
    theirs = transformers_model(ours)
    prompts = tokens(batch=1, n=12)
    cached = generate(ours, prompts, 20, ours.cfg.context_length, use_cache=True)
    uncached = generate(ours, prompts, 20, ours.cfg.context_length, use_cache=False)
    assert torch.equal(cached, uncached)
    hf = theirs.generate(prompts, max_new_tokens=20, do_sample=False, min_new_tokens=20)
    assert torch.equal(cached, hf)


def test_llama3_frequency_scaling_is_metas_rule():
    cfg = LlamaConfig(**LLAMA)
    plain = rope_frequencies(LlamaConfig(**{**LLAMA, "rope_scaling": None}))
    scaled = rope_frequencies(cfg)
    wavelength = 2 * torch.pi / plain
    # High frequencies (wavelength below 16 / 4 = 4 positions) kept, low ones (above 16) divided by the factor.
    assert torch.equal(scaled[wavelength < 4], plain[wavelength < 4])
    torch.testing.assert_close(scaled[wavelength > 16], plain[wavelength > 16] / 8)


def test_family_dispatch_and_config_errors():
    assert type(build_model({**LLAMA})).__name__ == "LlamaModel"
    assert type(build_model({"vocab_size": 50, "emb_dim": 8, "n_heads": 2, "n_layers": 1,
                             "context_length": 8})).__name__ == "GPTModel"
    assert model_config({**QWEN}).head_dim == 32
    with pytest.raises(UserError, match="n_kv_groups"):
        LlamaConfig(**{**LLAMA, "n_kv_groups": 3})
    with pytest.raises(UserError, match="family"):
        model_config({**LLAMA, "family": "mamba"})


def test_a_tied_model_has_one_tensor_and_starts_small():
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(**LLAMA))
    assert model.tied_head and model.out_head.weight is model.tok_emb.weight
    logits = model(tokens(batch=1, n=8))
    # N(0, 0.02) weights: first logits of about unit size (PyTorch's N(0, 1) embedding as the head: about 8 here).
    assert logits.std() < 1.5
    loss = torch.nn.functional.cross_entropy(logits[0], tokens(batch=1, n=8, seed=2)[0])
    assert abs(loss.item() - torch.log(torch.tensor(300.0)).item()) < 1.0
