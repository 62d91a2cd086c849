"""The keys of a command line's overrides, checked against the config they would change.

Hydra reports a mistyped key (``promt=hi``) in several lines and advises ``+promt=hi``, which then runs and
changes nothing. Here each such case is one UserError naming the key most likely meant.
"""

from __future__ import annotations

import difflib
import inspect
import re
import shlex
from pathlib import Path
from typing import Iterator

from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import OmegaConf

from gptlit.errors import UserError

# Hydra options that compose another config than the entry point's: its keys are not checked then.
OTHER_CONFIG_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun")


def check_keys(config_dir: Path, config_name: str, argv: list[str]) -> None:
    """Refuse an override of a key the config lacks, a key below an interpolation (which Hydra cannot set), a
    top-level ``+key=value`` (nothing reads it) and ``+key=value`` for a key that exists."""
    if any(arg.split("=")[0] in OTHER_CONFIG_FLAGS for arg in argv):
        return
    try:
        # Overrides hold an "=" or start with "~"; the other arguments are Hydra's options and their values.
        overrides = OverridesParser.create().parse_overrides(
            [arg for arg in argv if not arg.startswith("-") and ("=" in arg or arg.startswith("~"))]
        )
    except Exception:
        return  # a malformed override: Hydra says what is wrong with it
    groups = {p.name for p in config_dir.iterdir() if p.is_dir() and p.name != "hydra"}
    overrides = [o for o in overrides if o.key_or_group.split(".")[0].split("/")[0] != "hydra"]
    settings = [o for o in overrides if o.key_or_group not in groups]
    if not settings:
        return
    try:
        # The group choices decide which keys exist (model=tiny, +experiment=book_ch5).
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            choices = [first_choice(o) for o in overrides if o.key_or_group in groups]
            config = OmegaConf.to_container(compose(config_name, overrides=choices), resolve=False)
    except Exception:
        return  # the composition fails as it is: Hydra reports it
    for override in settings:
        check_key(override, config, f"{config_name}.py")


def check_key(override: Override, config: dict, script: str) -> None:
    key = override.key_or_group
    value = shlex.quote(override.input_line.partition("=")[2])  # as the user would type it again
    path = key.split(".")
    found, depth = lookup(config, path)
    parent = node_at(config, path[:depth])
    adds = override.is_add() or override.is_force_add()
    if found is None and not adds and isinstance(parent, str):
        source = re.fullmatch(r"\$\{([\w.]+)\}", parent)
        if source:
            raise UserError(f"{'.'.join(path[:depth])} takes its value from {source.group(1)}; write "
                            f"{'.'.join([source.group(1), *path[depth:]])}={value}")
    if override.is_add() and found:
        raise UserError(f"{key} is a setting already; write {key}={value}, without the +")
    target = parent.get("_target_") if isinstance(parent, dict) and depth == len(path) - 1 else None
    takes = constructor_arguments(target) if isinstance(target, str) else None
    if found is not False:
        return  # a known key
    if adds and depth > 0 and (takes is None or path[-1] in takes):
        return  # a new argument for a group's constructor, such as +trainer.accumulate_grad_batches=4
    group = ".".join(path[:depth])
    guess = likely_key(key, config)
    if guess:
        hint = f"did you mean {guess}{'' if override.is_delete() else '=' + value}?"
    elif takes is not None and path[-1] not in takes:
        hint = f"{target} takes no argument {path[-1]}; its arguments: {', '.join(sorted(takes))}"
    elif depth > 0 and "_target_" in parent and not override.is_delete():
        hint = f"to hand {group}'s constructor an argument its config does not list, write +{key}={value}"
    else:
        hint = f"python {script} --help lists the settings"
    if override.is_delete():
        raise UserError(f"~{key}: {script} has no setting {key} to remove; {hint}")
    if adds:
        plus = "++" if override.is_force_add() else "+"
        raise UserError(f"{plus}{key}={value} adds a setting that {script} never reads, so it would change "
                        f"nothing; {hint}")
    raise UserError(f"{script} has no setting {key}; {hint}")


def constructor_arguments(target: str) -> set[str] | None:
    """The keyword arguments the ``_target_`` of a group accepts, following ``**kwargs`` into the base classes'
    constructors (gptlit's AdamW hands them to torch's); None where that cannot be known."""
    try:
        obj = get_object(target)
    except Exception:
        return None
    names: set[str] = set()
    for owner in (obj.__mro__ if inspect.isclass(obj) else [obj]):
        init = owner.__init__ if inspect.isclass(obj) else owner
        if inspect.isclass(obj) and "__init__" not in vars(owner):
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names - {"self"}
    return None  # **kwargs all the way up: anything may be accepted


def first_choice(override: Override) -> str:
    """A group override, a sweep (model=tiny,gpt124m) cut to its first choice: the config is composed once."""
    if not override.is_sweep_override():
        return override.input_line
    prefix = override.input_line[: len(override.input_line) - len(override.input_line.lstrip("+~"))]
    return f"{prefix}{override.key_or_group}={next(iter(override.sweep_string_iterator()))}"


def lookup(config: dict, path: list[str]) -> tuple[bool | None, int]:
    """Whether the dotted ``path`` is in the (unresolved) config, and how many of its parts were found; None
    where the path runs into an interpolation or a list, which are not followed."""
    node = config
    for depth, part in enumerate(path):
        if not isinstance(node, dict):
            return None, depth
        if part not in node:
            return False, depth
        node = node[part]
    return True, len(path)


def node_at(config: dict, path: list[str]):
    for part in path:
        config = config[part]
    return config


def key_paths(config: dict, prefix: str = "") -> Iterator[str]:
    for key, value in config.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from key_paths(value, f"{prefix}{key}.")


def likely_key(key: str, config: dict) -> str | None:
    """The key a mistyped ``key`` most likely meant: the one key of that name elsewhere (lr: optimizer.lr),
    else the closest spelling of the whole path, else the one path whose last part is spelt closest."""
    paths = [p for p in key_paths(config) if not p.rsplit(".", 1)[-1].startswith("_")]
    name = key.rsplit(".", 1)[-1]
    same_name = [p for p in paths if p.rsplit(".", 1)[-1] == name]
    if len(same_name) == 1:
        return same_name[0]
    close = difflib.get_close_matches(key, paths, n=1, cutoff=0.8)
    if close:
        return close[0]
    by_name: dict[str, list[str]] = {}
    for p in paths:
        by_name.setdefault(p.rsplit(".", 1)[-1], []).append(p)
    close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.8)
    return by_name[close[0]][0] if close and len(by_name[close[0]]) == 1 else None
