"""The checks of an entry point's command line, made before Hydra runs, so a mistyped group or key is one line."""

from __future__ import annotations

import re
from pathlib import Path

from gptlit.cli.override_keys import check_keys
from gptlit.cli.user_errors import exit_on_user_error, fail

# conf/ beside the package: the entry scripts and the tests compose from it.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


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


def check_command_line(config_name: str, argv: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Everything an entry point checks on its command line before Hydra runs."""
    check_group_choices(config_dir, argv)
    with exit_on_user_error():
        check_keys(config_dir, config_name, argv)
