"""The Makefile's set-up commands pass what the user typed on to the scripts."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def planned(*args: str) -> str:
    """The last command `make -n` would run: what the target runs after its set-up."""
    out = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_overrides_without_args_reach_train_py():
    # `make train model=tiny` used to start the full 124M run: make kept model=tiny as a variable of its own.
    command = planned("train", "model=tiny", "trainer.max_epochs=2")
    assert command.startswith(".venv/bin/python train.py ")
    assert set(command.split()[2:]) == {"model=tiny", "trainer.max_epochs=2"}


def test_the_makefiles_own_variables_and_args_stay_as_they_were():
    assert planned("train", "TORCH_INDEX=https://download.pytorch.org/whl/cpu").split() == [".venv/bin/python", "train.py"]
    assert planned("train", "ARGS=model=tiny").split() == [".venv/bin/python", "train.py", "model=tiny"]


def test_quick_tier_leaves_out_the_slow_tests():
    assert planned("test-quick").startswith(".venv/bin/python -m pytest -m \"not slow\"")
