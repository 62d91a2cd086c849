"""Fault injection for the tests: writes that fail or die on demand, a disk that fills up, files damaged on disk.

Every file gptlit writes goes through ``gptlit.files.atomic_write``; ``WriteFaults`` reaches in there (it stands
in for the ``os`` and ``tempfile`` that module sees, nothing else) and, for the file named, makes its K-th write
run out of space half-way, or kill the process half-way. ``run_script`` runs ``train.py``/``generate.py`` (or
any script) as a user does, through ``fault_runner.py``, which installs such faults in the child before the
script starts, or kills it (SIGKILL, no cleanup) right after a named optimizer step.
``small_disk`` mounts a real tmpfs of a few MB where the machine allows it (root), so that a whole run meets
ENOSPC from the kernel in whichever write comes first. ``damage`` spoils a file on disk the ways disks and
copies do: cut short, emptied, bytes overwritten in the middle or at the start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("fault_runner.py")

# What a fault does to the write it hits.
ACTIONS = ("enospc", "kill-during")


class _FaultyFile:
    """The temporary file atomic_write writes: its first write puts half of its bytes on disk, then runs out of
    space or kills the process."""

    def __init__(self, f, action: str):
        self._f, self._action = f, action

    def write(self, data) -> int:
        view = data if isinstance(data, str) else memoryview(data).cast("B")
        self._f.write(view[: len(view) // 2])
        self._f.flush()
        if self._action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


class WriteFaults:
    """Faults on the files gptlit.files.atomic_write writes, keyed by the target's file name.

    ``add("last.ckpt", "enospc", nth=2)`` makes the second write of any ``last.ckpt`` run out of space.
    """

    def __init__(self):
        import gptlit.files

        self._module = gptlit.files
        self._faults: dict[str, tuple[str, int]] = {}
        self._counts: dict[str, int] = {}
        self._pending_paths: dict[str, str] = {}  # a temporary file made, not yet opened for writing -> its prefix
        self._pending: dict[int, str] = {}  # fd of a temporary file opened for writing -> its name prefix
        real_os, real_tempfile, faults = os, tempfile, self

        class FaultyOs(types.ModuleType):
            def __getattr__(self, name):
                return getattr(real_os, name)

            @staticmethod
            def open(path, *args, **kwargs):
                fd = real_os.open(path, *args, **kwargs)
                if str(path) in faults._pending_paths:
                    faults._pending[fd] = faults._pending_paths.pop(str(path))
                return fd

            @staticmethod
            def fdopen(fd, *args, **kwargs):
                f = real_os.fdopen(fd, *args, **kwargs)
                action = faults._action_for(faults._pending.pop(fd, None))
                return f if action is None else _FaultyFile(f, action)

        class FaultyTempfile(types.ModuleType):
            def __getattr__(self, name):
                return getattr(real_tempfile, name)

            @staticmethod
            def mkstemp(*args, **kwargs):
                fd, path = real_tempfile.mkstemp(*args, **kwargs)
                faults._pending_paths[path] = kwargs.get("prefix", "")
                return fd, path

        self._os, self._tempfile = FaultyOs("os"), FaultyTempfile("tempfile")

    def add(self, name: str, action: str, nth: int = 1) -> WriteFaults:
        assert action in ACTIONS, action
        self._faults[name] = (action, nth)
        return self

    def _action_for(self, prefix: str | None) -> str | None:
        # atomic_write names its temporary file ".<target name>.<...>"; only the target's name matters here.
        name = next((n for n in self._faults if prefix and prefix.startswith(f".{n}.")), None)
        if name is None:
            return None
        self._counts[name] = self._counts.get(name, 0) + 1
        action, nth = self._faults[name]
        return action if self._counts[name] == nth else None

    def install(self) -> None:
        self._saved = (self._module.os, self._module.tempfile)
        self._module.os, self._module.tempfile = self._os, self._tempfile

    def uninstall(self) -> None:
        self._module.os, self._module.tempfile = self._saved

    def __enter__(self) -> WriteFaults:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.uninstall()


def run_script(script: str, *args: str, faults: list[str] = (), timeout: int = 600, cwd: Path = ROOT
               ) -> subprocess.CompletedProcess:
    """``python script args...`` as a user runs it, with faults such as ``kill-at-step:80`` or
    ``enospc:last.ckpt:2`` (action:file name:which write) injected in the child (see fault_runner.py)."""
    command = [sys.executable, str(RUNNER), ",".join(faults), script, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def can_mount_tmpfs() -> bool:
    return sys.platform == "linux" and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount")


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int) -> Iterator[Path]:
    """A real filesystem of ``size_mb`` MB at ``path`` (tmpfs); skips the test where mounting is not allowed."""
    if not can_mount_tmpfs():
        pytest.skip("mounting a tmpfs needs root on Linux")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


DAMAGES = ("truncate", "empty", "overwrite-middle", "overwrite-start")


def damage(path: Path, how: str) -> None:
    """Spoil ``path`` in place: cut to half its length, emptied, or 64 bytes of 0xff written over its middle or
    its first bytes (where formats keep their header)."""
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = bytearray()
    elif how in ("overwrite-middle", "overwrite-start"):
        at = len(data) // 2 if how == "overwrite-middle" else 0
        data[at : at + 64] = b"\xff" * min(64, len(data) - at)
    else:
        raise ValueError(how)
    path.write_bytes(bytes(data))
