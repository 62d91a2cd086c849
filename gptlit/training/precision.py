"""The training precision that is fastest without hurting results on the machine at hand.

bf16 mixed precision pays only where bf16 matmuls run faster than fp32 ones: CUDA GPUs of compute capability
8.0 and newer (Ampere on), and CPUs with AMX tiles. A CPU with AVX512-BF16 but no AMX (such as a Sapphire
Rapids VM whose hypervisor hides AMX) runs bf16 matmuls slower than MKL's fp32 ones, so a training step under
bf16 autocast there is slower, not faster (bench/README.md); such machines, MPS and everything else train in
fp32. ``conf/trainer/default.yaml`` asks for this choice through the ``gptlit.training.precision`` resolver; an
explicit ``trainer.precision=...`` replaces it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from gptlit.core.device import precision_dtype, resolve_device_type  # noqa: F401 (precision_dtype: its old home)

BF16 = "bf16-mixed"
FP32 = "32-true"
RESOLVER = "gptlit.precision"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The feature flags the kernel reports for the first CPU; empty where there is no /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_fast_bf16() -> bool:
    # The kernel lists amx_bf16 only when it lets processes use the AMX tiles.
    return "amx_bf16" in cpu_flags()


def cuda_has_fast_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def default_precision(accelerator: str = "auto") -> str:
    """bf16-mixed where bf16 matmuls are native and fast on the device ``accelerator`` selects, else fp32."""
    device = resolve_device_type(accelerator)
    if device == "cuda":
        return BF16 if cuda_has_fast_bf16() else FP32
    if device == "cpu":
        return BF16 if cpu_has_fast_bf16() else FP32
    return FP32


def register_resolver() -> None:
    OmegaConf.register_new_resolver(RESOLVER, default_precision, replace=True)
