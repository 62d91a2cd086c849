"""What the entry points share: one-line errors, checks of the command line before Hydra runs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Iterator

from gptlit.app.override_keys import check_keys
from gptlit.errors import find_user_error
from gptlit.training.console import log as console_log

# What Hydra writes into a run directory before the task starts.
HYDRA_START_FILES = {".hydra", "train.log", "generate.log"}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    # Into train.log too when the run directory stays (gptlit.training.console; a no-op elsewhere).
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
        user_error = find_user_error(err)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if run_dir is not None:
            remove_if_only_hydra(Path(run_dir))
        fail(str(user_error))


def remove_if_only_hydra(run_dir: Path) -> None:
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= HYDRA_START_FILES:
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # the date folder, when this run was its only one


# Keys that moved: the old spelling gets one line naming the new one and why it moved.
MOVED_KEYS = {
    "model.init_from": ("init_from", "a starting point is a training setting, not part of the model"),
    "module.eval_freq": ("callbacks.book_schedule.eval_freq", "the book's schedule is a callback (gptlit/book.py, "
                         "added by experiment=book_ch5)"),
    "module.eval_iter": ("callbacks.book_schedule.eval_iter", "the book's schedule is a callback (gptlit/book.py, "
                         "added by experiment=book_ch5)"),
}


def check_group_choices(config_dir: Path, argv: list[str]) -> None:
    """Refuse `group=option` overrides naming no file in conf/<group>/ with one line, before Hydra prints
    its several-line report."""
    for arg in argv:
        key = arg.lstrip("+~").partition("=")[0]
        if key in MOVED_KEYS:
            new, why = MOVED_KEYS[key]
            fail(f"{key} is now {new}: {why}; write {arg.lstrip('+~').replace(key, new, 1)}")
        match = re.fullmatch(r"\+{0,2}([a-z_]+)=(.*)", arg)
        if not match or "(" in match.group(2):
            continue  # not a group choice, or a sweep function such as range(...)
        group, values = match.groups()
        group_dir = config_dir / group
        if not group_dir.is_dir():
            continue
        options = sorted(p.stem for p in group_dir.glob("*.yaml"))
        for value in filter(None, values.split(",")):
            if value != "null" and value not in options:
                fail(f"unknown {group}={value}; choose one of: {', '.join(options)} (files in {group_dir})")


def check_command_line(config_dir: Path, config_name: str, argv: list[str]) -> None:
    """Everything an entry point checks on its command line before Hydra runs."""
    check_group_choices(config_dir, argv)
    with exit_on_user_error():
        check_keys(config_dir, config_name, argv)
