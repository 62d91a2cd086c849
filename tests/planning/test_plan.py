"""The planner's predictions against what a real model and a real run do."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gptlit.core.families import build_model
from gptlit.core.llama import LlamaConfig
from gptlit.core.model import GPTConfig
from gptlit.planning.plan import (
    FP32_BYTES,
    activation_bytes_per_token,
    batches_per_evaluation,
    evaluation_count,
    largest_micro_batch,
    parameter_count,
    RunShape,
    describe,
    plan_memory,
    plan_run,
    steps_for,
)
from gptlit.planning import plan as plan_module

from ..conftest import ROOT, TINY_CFG, find_verdict


def saved_activation_bytes(cfg, batch: int) -> int:
    """Bytes autograd keeps for the backward pass of one training forward and loss, parameters left out."""
    model = build_model(cfg).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()  # views of one storage count once
        return t

    x = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        F.cross_entropy(model(x).flatten(0, 1), x.flatten())
    return sum(storages.values())


@pytest.mark.parametrize(
    "changes",
    [
        {},  # dropout on: SDPA falls back to the math path on a CPU
        {"drop_rate": 0.0},  # SDPA's fused CPU kernel
        {"kernels": "book"},
        {"n_heads": 8, "context_length": 64},
        {"emb_dim": 96, "n_layers": 3, "qkv_bias": True},
    ],
)
def test_activation_formula_matches_what_autograd_saves(changes):
    cfg = GPTConfig(**{"vocab_size": 1000, "context_length": 32, "emb_dim": 64, "n_heads": 4, "n_layers": 2, **changes})
    batch = 3
    predicted = activation_bytes_per_token(cfg, "cpu") * batch * cfg.context_length
    # The formula adds the backward pass's peak (the logits' gradient and log-softmax) to what is saved.
    saved = predicted - 2 * cfg.vocab_size * FP32_BYTES * batch * cfg.context_length
    assert saved == pytest.approx(saved_activation_bytes(cfg, batch), rel=0.05)


LLAMA = {"family": "llama3", "vocab_size": 1000, "context_length": 32, "emb_dim": 64, "n_heads": 4, "n_kv_groups": 2,
         "n_layers": 2, "hidden_dim": 96}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"hidden_dim": 160, "n_layers": 3},
        {"n_kv_groups": 4},
        {"n_heads": 8, "context_length": 64},
        {"family": "qwen3", "qk_norm": True, "head_dim": 32},
        {"family": "qwen3", "qk_norm": True, "n_kv_groups": 1, "emb_dim": 128},
        {"drop_rate": 0.1},  # dropout: SDPA falls back to the explicit softmax on a CPU; the formula estimates it
        {"drop_rate": 0.1, "n_heads": 8, "family": "qwen3", "qk_norm": True},
    ],
)
def test_llama_activation_formula_matches_what_autograd_saves(changes):
    cfg = LlamaConfig(**{**LLAMA, **changes})
    batch = 3
    predicted = activation_bytes_per_token(cfg, "cpu") * batch * cfg.context_length
    saved = predicted - 2 * cfg.vocab_size * FP32_BYTES * batch * cfg.context_length
    # Logits dominate tiny models, so the blocks' share is checked on its own too: the difference of two depths.
    deeper = LlamaConfig(**{**LLAMA, **changes, "n_layers": cfg.n_layers + 1})
    block_predicted = (activation_bytes_per_token(deeper, "cpu") - activation_bytes_per_token(cfg, "cpu")) * batch * cfg.context_length
    block_saved = saved_activation_bytes(deeper, batch) - saved_activation_bytes(cfg, batch)
    tolerance = 0.08 if cfg.drop_rate else 0.01
    assert saved == pytest.approx(saved_activation_bytes(cfg, batch), rel=0.05)
    assert block_predicted == pytest.approx(block_saved, rel=tolerance)


@pytest.mark.parametrize("cfg", [GPTConfig(emb_dim=64, n_heads=4, n_layers=3, context_length=48),
                                 GPTConfig(qkv_bias=True, emb_dim=32, n_heads=2, n_layers=1),
                                 LlamaConfig(**LLAMA), LlamaConfig(**{**LLAMA, "tie_embeddings": False}),
                                 LlamaConfig(**{**LLAMA, "family": "qwen3", "qk_norm": True, "head_dim": 32})],
                         ids=["gpt2", "gpt2-bias", "llama3", "llama3-untied", "qwen3"])
def test_parameter_count_is_the_models(cfg):
    assert parameter_count(cfg) == sum(p.numel() for p in build_model(cfg).parameters())


def test_memory_split_of_gpt2_124m():
    # 162,419,712 parameters at context 256 (the book's 163,009,536 is at context 1024: 768 x 768 fewer here).
    mem = plan_memory(GPTConfig(context_length=256), micro_batch=2, seq_len=256, device_type="cpu")
    assert mem.weights == mem.gradients == 162_419_712 * 4 and mem.optimizer == 162_419_712 * 8
    assert mem.baseline == 0 and mem.peak == mem.weights + mem.gradients + mem.optimizer + mem.activations


def test_whole_run_ends_at_the_first_limit():
    assert steps_for(-1, 10, 9, None, 512) == (90, "10 epochs")
    assert steps_for(20, 10, 9, None, 512) == (20, "trainer.max_steps=20")
    assert steps_for(-1, 10, 9, 5120, 512) == (10, "a budget of 5,120 tokens")
    assert steps_for(-1, None, None, None, 512) == (None, "no limit set")


def test_evaluations_follow_the_interval_or_the_books_schedule():
    # The default run: 90 steps, evaluated after steps 5, 10, ..., 90 (18 lines); the book's run after steps
    # 1, 6, ..., 86 (18 lines too); a fractional interval counts epochs, which the plan leaves out.
    assert evaluation_count(90, 5) == 18 and evaluation_count(90, 5, eval_freq=5) == 18
    assert evaluation_count(91, 5, eval_freq=5) == 19 and evaluation_count(90, 0.5) is None
    assert evaluation_count(None, 5) is None
    # limit_val_batches: a count, capped by the split's batches, or a fraction of them.
    assert batches_per_evaluation(5, 9) == 5 and batches_per_evaluation(5, 1) == 1
    assert batches_per_evaluation(0.5, 9) == 5 and batches_per_evaluation(1.0, 9) == 9


def test_largest_micro_batch_is_the_last_that_fits():
    cfg = GPTConfig(context_length=1024)
    capacity = 80 * 10**9
    best = largest_micro_batch(cfg, 1024, "cuda", capacity)
    assert best > 0
    assert plan_memory(cfg, best, 1024, "cuda").peak <= 0.9 * capacity < plan_memory(cfg, best + 1, 1024, "cuda").peak


TINY_RUN = ["model=tiny", "data.context_length=32", f"data.path={find_verdict()}", "trainer.max_steps=6",
            "trainer.precision=32-true"]


def peak_rss_of_train(tmp_path) -> int:
    """Peak resident bytes of a real `python train.py` run, read by the process itself as it exits."""
    code = (
        "import atexit, resource, runpy, sys\n"
        "atexit.register(lambda: print(f'PEAK {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}', file=sys.stderr))\n"
        f"sys.argv = ['train.py', *{TINY_RUN!r}, 'hydra.run.dir={tmp_path}']\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return int(re.search(r"PEAK (\d+)", run.stderr).group(1))


def test_plan_predicts_the_peak_memory_of_a_real_tiny_run(tmp_path):
    out = subprocess.run([sys.executable, "plan.py", *TINY_RUN], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    value, unit = re.search(r"peak\s+([\d.]+) (MB|GB)\s+predicted", out.stdout).groups()
    predicted = float(value) * (1e6 if unit == "MB" else 1e9)
    assert "3,242,752 parameters" in out.stdout and "whole run    6 steps" in out.stdout
    assert predicted == pytest.approx(peak_rss_of_train(tmp_path), rel=0.15)


def test_plan_refuses_a_bad_override_in_one_line():
    out = subprocess.run([sys.executable, "plan.py", "model=tiny", "data.batch_sise=3"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: ") and "batch_sise" in out.stderr


def test_help_lists_settings_and_examples_and_promises_no_speed():
    out = subprocess.run([sys.executable, "plan.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    assert "== Settings" in out.stdout and "== Examples ==" in out.stdout and "python plan.py model=gpt1558m" in out.stdout
    assert "Takes seconds" not in out.stdout and "tokenized once" in out.stdout


def test_plan_says_when_the_run_does_not_fit(monkeypatch):
    # gpt1558m's 31 GB on a 23 GB machine was printed as if it would run.
    monkeypatch.setattr(plan_module, "available_memory", lambda device: 10**6)
    shape = RunShape(config=GPTConfig(**TINY_CFG), micro_batch=2, devices=1, accumulation=1,
                     device=torch.device("cpu"), precision="32-true", autocast_dtype=None,
                     optimizer_factory=lambda model: torch.optim.AdamW(model.parameters()), steps=3, steps_per_epoch=3,
                     budget="max_steps", baseline=0)
    text = describe(plan_run(shape))
    assert "DOES NOT FIT: cpu has 1.00 MB free; lower data.batch_size" in text
    monkeypatch.setattr(plan_module, "available_memory", lambda device: 10**12)
    assert re.search(r"\n  fits +1\.00 TB  free on cpu now\n", describe(plan_run(shape)))
