"""Lightning's checkpoint I/O made safe: atomic saves, loads that never unpickle code."""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gptlit.files import atomic_write
from gptlit.weights.io import read_checkpoint, tensor_bytes


class SafeCheckpointIO(TorchCheckpointIO):
    """Every save is atomic (a full disk is one line that names the file and keeps the previous one) and every
    load refuses anything but tensors and plain data (weights_only=True), so a checkpoint from elsewhere cannot
    run code when resumed from."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_write(path, size_hint=tensor_bytes(checkpoint)) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        return read_checkpoint(path)
