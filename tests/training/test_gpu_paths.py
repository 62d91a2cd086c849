"""The CUDA-only paths, for the first machine with a GPU to run with one command:

    python -m pytest -m gpu

Each is skipped where torch sees no CUDA GPU (tests/conftest.py), and so has not yet run in CI: bf16-mixed
training, TF32 matmuls, fused AdamW on the device, CUDA's random states in a checkpoint and a resume under
them, flash attention for the model's attention, and DDP and FSDP over NCCL (two GPUs, FSDP in bf16).
docs/scaling.md lists them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gptlit.cli.build import fit
from gptlit.core.model import GPTConfig, GPTModel
from gptlit.weights.io import read_checkpoint

from ..conftest import ROOT, TINY_CFG, compose_train, find_verdict

pytestmark = pytest.mark.gpu

ON_GPU = ("trainer.accelerator=gpu", "trainer.devices=1")


def test_bf16_mixed_training_with_fused_adamw_and_tf32_matmuls(tmp_path):
    trainer = fit(compose_train(tmp_path, *ON_GPU, "trainer.precision=bf16-mixed", "trainer.max_steps=4"))
    module = trainer.lightning_module
    assert next(module.parameters()).device.type == "cuda"
    assert next(module.parameters()).dtype is torch.float32  # mixed: fp32 weights, bf16 matmuls
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    assert torch.get_float32_matmul_precision() == "high"  # FastFloat32Matmuls: TF32 for the fp32 matmuls
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


def test_cuda_random_states_are_checkpointed_and_a_resume_with_dropout_is_bit_for_bit(tmp_path):
    common = (*ON_GPU, "trainer.precision=32-true", "model.drop_rate=0.1")
    whole = fit(compose_train(tmp_path / "whole", *common, "trainer.max_steps=6"))
    fit(compose_train(tmp_path / "cut", *common, "trainer.max_steps=3"))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert "cuda" in read_checkpoint(last)["rng_states"]
    resumed = fit(compose_train(tmp_path / "cut", *common, "trainer.max_steps=6", f"ckpt_path={last}"))
    for (name, a), b in zip(whole.lightning_module.state_dict().items(), resumed.lightning_module.state_dict().values()):
        assert torch.equal(a, b), name


def test_flash_attention_runs_the_models_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = GPTModel(GPTConfig(**{**TINY_CFG, "drop_rate": 0.0})).cuda().to(torch.bfloat16).eval()
    idx = torch.randint(0, TINY_CFG["vocab_size"], (2, 32), device="cuda")
    with torch.no_grad():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises where flash attention cannot take the call
            flash = model(idx)
        with sdpa_kernel(SDPBackend.MATH):
            math = model(idx)
    torch.testing.assert_close(flash.float(), math.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_ddp_and_fsdp_over_nccl_on_two_gpus(tmp_path, trainer):
    run_dir = tmp_path / "run"
    precision = ["trainer.precision=bf16-mixed"] if trainer == "fsdp" else []
    out = subprocess.run([sys.executable, "train.py", "model=tiny", f"trainer={trainer}", "trainer.accelerator=gpu",
                          "trainer.devices=2", "trainer.max_steps=6", "data.context_length=32", *precision,
                          f"data.path={find_verdict()}", f"hydra.run.dir={run_dir}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "distributed_backend=nccl" in out.stdout + out.stderr
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6
