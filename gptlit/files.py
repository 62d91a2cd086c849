"""Writing files so that a crash, a signal or a full disk never leaves a half-written file in place."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import IO, Iterator

from gptlit.errors import UserError


@functools.cache
def _umask() -> int:
    # The process umask can only be read by setting it; done once, on first write, not at import.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_permissions(path: str | Path) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (owner-only) the permissions the umask gives new ones."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Yield a temporary file beside ``path`` that replaces ``path`` only once it is complete and synced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        usual_permissions(tmp)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fetch(url: str, path: str | Path, fix: str) -> None:
    """Download ``url`` into ``path``; a failure (offline, say) is one UserError ending in ``fix``, and leaves
    nothing behind."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response, atomic_write(path) as out:
            out.write(response.read())
    except OSError as err:
        reason = getattr(err, "reason", None)
        detail = f"{err.__class__.__name__}: {reason}" if reason else err.__class__.__name__
        raise UserError(f"{path} is missing and could not be downloaded from {url} ({detail}); {fix}") from None
