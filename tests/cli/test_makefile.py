"""The Makefile's set-up commands pass what the user typed on to the scripts."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def planned(*args: str) -> str:
    """The last command `make -n` would run: what the target runs after its set-up."""
    # Under `make test` the outer make's variables (ARGS, MAKEFLAGS, MAKELEVEL) reach this one through the
    # environment, and it then prints "make[1]: Leaving directory" after the command: the test asks what a user's
    # own `make` would run in a fresh shell, so it gives make a bare environment.
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    out = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
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
