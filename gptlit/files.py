"""Writing files so that a crash, a signal or a full disk never leaves a half-written file in place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Yield a temporary file beside ``path`` that replaces ``path`` only once it is complete and synced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the usual permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, but every save is atomic and every load refuses anything but tensors and
    plain data (weights_only=True), so a checkpoint from elsewhere cannot run code when resumed from."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_write(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        from gptlit.weights import read_checkpoint

        return read_checkpoint(path)
