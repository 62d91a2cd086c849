"""The checks of an entry point's command line, made before Hydra runs, so a mistyped group or key is one line."""

from __future__ import annotations

import re
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

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


def check_text_values(argv: list[str], groups: set[str]) -> None:
    """A sentence as a value (prompt=Hello, world) is a sweep or a syntax error to Hydra's grammar, which then
    advises --multirun. Say instead how to pass it: quoted inside the argument, or from a file."""
    if any(arg in ("-m", "--multirun") for arg in argv):
        return
    parser = OverridesParser.create()
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or arg.startswith("-") or not re.fullmatch(r"[+~]{0,2}[\w.]+", key) or key.lstrip("+~") in groups:
            continue
        try:
            sweep = parser.parse_override(arg).is_sweep_override()
        except Exception:
            sweep = None
        if sweep is False:
            continue
        name = key.lstrip("+~")
        why = "reads the commas as a list of values" if sweep else "cannot read it as a value"
        if "'" in value:
            quoted = f'"{name}=\\"{value}\\""'  # the shell's double quotes keep the apostrophe and the inner quotes
        else:
            quoted = f"'{name}=\"{value}\"'"
        from_file = "; or put the text in a file and pass prompt_file=FILE (prompt_file=- reads stdin)" \
            if name == "prompt" else ""
        fail(f"{name}={value}: Hydra {why}; quote the value inside the argument: {quoted}{from_file}")


def check_command_line(config_name: str, argv: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Everything an entry point checks on its command line before Hydra runs."""
    check_text_values(argv, {p.name for p in config_dir.iterdir() if p.is_dir()})
    check_group_choices(config_dir, argv)
    with exit_on_user_error():
        check_keys(config_dir, config_name, argv)
