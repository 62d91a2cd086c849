"""TF32 matmuls on CUDA for fp32 training."""

from __future__ import annotations

import lightning as L
import torch


class FastFloat32Matmuls(L.Callback):
    """On CUDA, let fp32 matmuls run on TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation).

    Elsewhere nothing changes: on CPU the same switch may move fp32 matmuls to bf16 and alter results.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.set_float32_matmul_precision("high")
