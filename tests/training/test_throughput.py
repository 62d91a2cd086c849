import lightning as L
import pytest
import torch

from gptlit.training.callbacks import throughput as callbacks
from gptlit.planning import flops
from gptlit.planning.flops import step_matmul_shapes
from gptlit.training.callbacks.throughput import Throughput
from gptlit.data.text import TextDataModule
from gptlit.core.model import GPTConfig, GPTModel
from gptlit.training.module import GPTLitModule
from gptlit.planning.flops import matmul_parameters, measure_matmul_flops, training_flops_per_token


def embedding_free_parameters(model: GPTModel) -> int:
    lookups = model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
    return sum(p.numel() for p in model.parameters()) - lookups


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_matmul_parameters_count_the_model_without_embeddings(tiny_cfg, qkv_bias):
    cfg = GPTConfig.from_any({**tiny_cfg, "qkv_bias": qkv_bias})
    assert matmul_parameters(cfg) == embedding_free_parameters(GPTModel(cfg))


def test_gpt124m_flops_per_token():
    cfg = GPTConfig(context_length=1024)
    with torch.device("meta"):
        n = embedding_free_parameters(GPTModel(cfg))
    # The book's 163,009,536 parameters less 50257 x 768 token and 1024 x 768 position embeddings.
    assert n == 163_009_536 - 50257 * 768 - 1024 * 768
    assert training_flops_per_token(cfg) == 6 * n + 12 * 12 * 1024 * 768
    assert training_flops_per_token(cfg, seq_len=256) == 6 * n + 12 * 12 * 256 * 768


@pytest.mark.parametrize("tied", [True, False])
def test_llama_matmul_parameters_and_flops(tied):
    from gptlit.core.llama import LlamaConfig, LlamaModel

    cfg = LlamaConfig(family="qwen3", vocab_size=500, context_length=32, emb_dim=64, n_heads=4, n_kv_groups=2,
                      n_layers=2, hidden_dim=96, head_dim=32, qk_norm=True, tie_embeddings=tied)
    model = LlamaModel(cfg)
    # Every parameter but the embedding lookup; a tied head is that same tensor, counted once, as a matmul.
    n = sum(p.numel() for p in model.parameters()) - (0 if tied else model.tok_emb.weight.numel())
    assert matmul_parameters(cfg) == n
    assert training_flops_per_token(cfg) == 6 * n + 12 * 2 * 32 * 4 * 32  # attention over 4 heads of 32
    # The probe's shapes hold every weight matrix of the forward pass once.
    shapes = step_matmul_shapes(cfg, tokens=1)
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and "tok_emb" not in name)
    assert sum(k * n_ * count for _, k, n_, count in shapes) == matrices + (500 * 64 if tied else 0)


def test_matmul_rate_is_measured():
    assert measure_matmul_flops("cpu", torch.float32, size=128, repeats=2) > 0


def test_throughput_logs_tokens_per_second_and_mfu(monkeypatch, verdict_path, tiny_cfg):
    # A clock that advances 0.25 s per reading makes every timed step take exactly 0.25 s.
    ticks = iter(range(10**6))
    monkeypatch.setattr(callbacks, "perf_counter", lambda: 0.25 * next(ticks))
    cfg = GPTConfig.from_any({**tiny_cfg, "context_length": 32})
    data = TextDataModule(str(verdict_path), context_length=32, batch_size=2)
    trainer = L.Trainer(
        max_steps=4,
        limit_val_batches=0,
        callbacks=[Throughput(window=3, peak_flops=1e9)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(GPTLitModule(cfg), datamodule=data)
    tokens_per_sec = trainer.callback_metrics["train/tokens_per_sec"].item()
    assert tokens_per_sec == pytest.approx(2 * 32 / 0.25)
    assert trainer.callback_metrics["train/mfu"].item() == pytest.approx(
        tokens_per_sec * training_flops_per_token(cfg, 32) / 1e9, rel=1e-5
    )
    assert "train/tokens_per_sec" in trainer.progress_bar_metrics


def test_mfu_is_measured_against_the_steps_own_matmuls_as_plan_py_does(monkeypatch, verdict_path, tiny_cfg):
    # One definition of MFU: the bar's denominator is the rate of this step's matmul shapes (plan.py's), not of
    # a 2048^3 product, which a small model's step never reaches (0.026 against 0.36 for the same tiny run).
    timed = []
    monkeypatch.setattr(flops, "measure_matmul_flops", lambda device, dtype, repeats=5, shapes=None: timed.append(shapes) or 1e9)
    cfg = GPTConfig.from_any({**tiny_cfg, "context_length": 32})
    data = TextDataModule(str(verdict_path), context_length=32, batch_size=2)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, callbacks=[Throughput(window=3)], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", devices=1)
    trainer.fit(GPTLitModule(cfg), datamodule=data)
    assert timed == [step_matmul_shapes(cfg, 2 * 32)]
