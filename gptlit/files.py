"""Writing files so that a crash, a signal or a full disk never leaves a half-written file in place."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import shutil
import socket
import tempfile
import urllib.request
from pathlib import Path
from typing import IO, Iterator

from gptlit.errors import UserError

# A full disk, or a full quota: the same advice for both.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class DiskFull(UserError):
    """A file could not be written for lack of space; the previous version of it, if any, is untouched."""


@functools.cache
def _umask() -> int:
    # The process umask can only be read by setting it; done once, on first write, not at import.
    mask = os.umask(0)
    os.umask(mask)
    return mask


@functools.cache
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _writer_id() -> str:
    """``<pid>@<host>``: names a temporary file after the process writing it, so that a later write can tell a
    file left by a killed process from one another process is still writing."""
    return f"{os.getpid()}@{_host()}"


def _remove_stale(path: Path) -> None:
    """Delete the temporary files of ``path`` that processes of this machine left when they were killed mid-write
    (kill -9, the OOM killer): each may be as large as the file itself."""
    host = _host()
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*@{host}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split("@", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _running(pid: int) -> bool:
    if os.name == "nt":
        # Windows' os.kill does not probe: any signal but the two console ones terminates the process that now
        # has the id. Asked without signalling through psutil; without it, the file is kept (it costs only disk).
        try:
            import psutil
        except ImportError:
            return True
        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def human_bytes(n: float) -> str:
    """A size in decimal units with about three significant figures: 512 B, 3.82 GB, 41.2 MB, 806 MB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            break
        n /= 1000
    if unit == "B" or abs(n) >= 100:
        return f"{n:.0f} {unit}"
    return f"{n:.2f} {unit}" if abs(n) < 10 else f"{n:.1f} {unit}"


def usual_permissions(path: str | Path) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (owner-only) the permissions the umask gives new ones."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | Path, size_hint: int | None = None) -> Iterator[Path]:
    """Yield the name of a temporary file beside ``path``, for a writer that takes a file name (safetensors
    writes from the tensors' own memory that way, with no copy of them); it replaces ``path`` only once it is
    complete and synced.

    A disk that fills up raises DiskFull (a UserError: one line, exit 2) naming the file, the space it needs
    (``size_hint`` bytes when the caller knows it, else more than what fit) and what is free, and saying that
    the previous file is intact: the temporary file is removed, ``path`` is never touched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_writer_id()}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # After the writer, which may have made the file anew (safetensors' save_file writes owner-only files).
        usual_permissions(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        written = 0
        with contextlib.suppress(OSError):
            written = os.stat(tmp).st_size
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if out_of_space(err):
            raise DiskFull(_no_space_message(path, size_hint, written)) from None
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", size_hint: int | None = None) -> Iterator[IO]:
    """atomic_path, for writers that take an open file."""
    with atomic_path(path, size_hint) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), mode) as f:
        yield f
        f.flush()


# How writers in other languages (safetensors' Rust) report ENOSPC/EDQUOT: the OS error's code in the text.
_NO_SPACE_TEXT = re.compile(r"\b(?:os error|code:) (?:%s)\b" % "|".join(str(code) for code in sorted(_NO_SPACE)))


def out_of_space(err: BaseException | None) -> BaseException | None:
    """The ENOSPC/EDQUOT error behind ``err``, if any: torch.save, for one, reports a failed write as a
    RuntimeError of its own, raised while handling the OSError; safetensors as an error naming the OS's code."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _NO_SPACE or _NO_SPACE_TEXT.search(str(err)):
            return err
        err = err.__cause__ or err.__context__
    return None


def _no_space_message(path: Path, size_hint: int | None, written: int) -> str:
    need = f"about {human_bytes(size_hint)}" if size_hint else f"more than the {human_bytes(written)} that fit"
    try:
        free = f"{human_bytes(shutil.disk_usage(path.parent).free)} are free"
    except OSError:
        free = "free space unknown"
    kept = f"the previous {path.name} is intact" if path.exists() else "nothing was left half-written"
    return (f"no space left to write {path} (it needs {need}, {free}); {kept}. Free some space on that disk, "
            "or write elsewhere, and run again")


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


def shown_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it, as the user would type it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
