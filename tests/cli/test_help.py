"""Each entry point's --help describes its own groups and settings, and lists every option its groups have."""

import re
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ..conftest import ROOT

CONF = ROOT / "conf"
# The groups each entry point composes; generate.py's --help must not offer training's.
GROUPS = {
    "train": {"model", "data", "trainer", "optimizer", "scheduler", "decoding", "logger", "callbacks", "experiment"},
    "generate": {"decoding", "model"},
    "eval": {"task", "data", "model"},
    "export": {"model"},
    "tokenizer": {"data"},
}


def help_text(entry):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(entry, return_hydra_config=True).hydra.help.template


def section(text, title):
    return text.split(f"== {title}")[1].split("\n== ")[0]


def described_groups(text):
    """Group name -> its description, continuation lines included."""
    groups, current = {}, None
    for line in section(text, "Groups").splitlines()[1:]:
        match = re.match(r"  (\w+) +(.*)", line)
        if match:
            current = match.group(1)
            groups[current] = match.group(2)
        elif line.strip() and current:
            groups[current] += " " + line.strip()
    return groups


@pytest.mark.parametrize("entry", ["train", "generate", "eval", "export", "tokenizer"])
def test_help_describes_every_option_of_its_own_groups_only(entry):
    groups = described_groups(help_text(entry))
    assert set(groups) == GROUPS[entry]
    for group, description in groups.items():
        for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
            assert re.search(rf"\b{option}\b", description), f"{group}={option} is not in --help"


@pytest.mark.parametrize("entry", ["train", "generate", "eval", "export", "tokenizer"])
def test_help_describes_the_top_level_settings(entry):
    settings = section(help_text(entry), "Settings")
    config = OmegaConf.load(CONF / f"{entry}.yaml")
    for key in config:
        if key in ("defaults", "hydra", "run_dir"):  # run_dir follows hydra.run.dir, which --help describes
            continue
        assert re.search(rf"^  {key}[.=]", settings, re.MULTILINE), f"{key} is not described"


def test_generate_help_prints_its_own_text():
    result = subprocess.run([sys.executable, "generate.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("python generate.py ckpt_path=FILE|pretrained=NAME")
    assert "trainer" not in section(result.stdout, "Groups")
    assert "\nmax_new_tokens: 50\n" in result.stdout  # the composed config, every key with its default
