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
from gptlit.errors import UserError, find_user_error
from gptlit.files import out_of_space
from gptlit.training.console import log as console_log

# What Hydra writes into a run directory before the task starts.
HYDRA_START_FILES = {".hydra", "train.log", "generate.log", "eval.log", "export.log"}


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
        user_error = find_user_error(err) or _disk_full(err)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if run_dir is not None:
            remove_if_only_hydra(Path(run_dir))
        fail(one_line(str(user_error)))


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


# Keys that moved: the old spelling gets one line naming the new one and why it moved.
MOVED_KEYS = {
    "model.init_from": ("init_from", "a starting point is a training setting, not part of the model"),
    "module.eval_freq": ("callbacks.book_schedule.eval_freq", "the book's schedule is a callback (gptlit/book.py, "
                         "added by experiment=book_ch5)"),
    "module.eval_iter": ("callbacks.book_schedule.eval_iter", "the book's schedule is a callback (gptlit/book.py, "
                         "added by experiment=book_ch5)"),
}


def extra_config_dirs(argv: list[str]) -> list[Path]:
    """The folders of `--config-dir DIR` / `-cd DIR` (Hydra's option adding a config search path)."""
    dirs = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.partition("=")[2]))
    return dirs


def check_config_files(config_dirs: list[Path]) -> None:
    """Every config file must be UTF-8 YAML: a damaged one is one line naming it, not Hydra's traceback."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for folder in config_dirs:
        for path in sorted(folder.rglob("*.yaml")):
            try:
                yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
                reason = " ".join(str(err).split())[:160]
                fail(f"config {path} cannot be read ({type(err).__name__}: {reason}); repair or restore it")


def check_group_choices(config_dir: Path, argv: list[str]) -> None:
    """Refuse `group=option` overrides naming no file in conf/<group>/ (nor in a `--config-dir` of the
    command line) with one line, before Hydra prints its several-line report."""
    config_dirs = [config_dir, *extra_config_dirs(argv)]
    check_config_files(config_dirs)
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
        options = sorted({p.stem for d in config_dirs for p in (d / group).glob("*.yaml")})
        for value in filter(None, values.split(",")):
            if value != "null" and value not in options:
                fail(f"unknown {group}={value}; choose one of: {', '.join(options)} (files in {group_dir})")


def check_command_line(config_dir: Path, config_name: str, argv: list[str]) -> None:
    """Everything an entry point checks on its command line before Hydra runs."""
    check_group_choices(config_dir, argv)
    with exit_on_user_error():
        check_keys(config_dir, config_name, argv)
