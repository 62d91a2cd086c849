"""Bad input and faults as one line: `error: <message>` on stderr, exit status 2, no traceback, no litter."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

from omegaconf.errors import MissingMandatoryValue

from gptlit.errors import UserError, find_user_error
from gptlit.files import out_of_space
from gptlit.console import log as console_log

# What Hydra writes into a run directory before the task starts.
HYDRA_START_FILES = {".hydra", "train.log", "generate.log", "eval.log", "export.log"}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    # Into train.log too when the run directory stays (gptlit.console; a no-op elsewhere).
    console_log.error(f"error: {message}")
    sys.exit(2)


@contextlib.contextmanager
def exit_on_user_error(run_dir: str | Path | None = None) -> Iterator[None]:
    """Turn a UserError into `error: <message>` on stderr and exit status 2 (HYDRA_FULL_ERROR=1 keeps the
    traceback). A run directory that holds nothing but what Hydra wrote at start is removed, so bad input leaves
    no litter."""
    try:
        yield
    except Exception as err:
        user_error = find_user_error(err) or _disk_full(err) or _missing_value(err)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if run_dir is not None:
            remove_if_only_hydra(Path(run_dir))
        fail(one_line(str(user_error)))


def _missing_value(err: BaseException) -> UserError | None:
    """A setting the config marks ??? (required, no default) that the command line did not give."""
    if isinstance(err, MissingMandatoryValue):
        return UserError(f"{err.full_key} has no value; it is required: add {err.full_key}=... to the command line")
    return None


def _disk_full(err: BaseException) -> UserError | None:
    """A full disk met by a write that is not gptlit's own (a logger's files): gptlit's own writes say more
    (gptlit.files.DiskFull), and every one of them leaves its previous file intact."""
    cause = out_of_space(err)
    if cause is None:
        return None
    where = f" to write {cause.filename}" if cause.filename else ""
    return UserError(f"no space left on the device{where}; the checkpoints written so far are intact. Free some "
                     "space on that disk, or write elsewhere, and run again")


def one_line(message: str) -> str:
    # An error raised in a DataLoader worker comes back with the worker's traceback folded into its message;
    # its own message is the last line, after the exception's qualified name.
    if "\nOriginal Traceback" in message:
        return message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return message


def remove_if_only_hydra(run_dir: Path) -> None:
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= HYDRA_START_FILES:
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # the date folder, when this run was its only one
