"""A real train.py process, stopped by a real signal or killed outright, resumes to the same final weights bit
for bit."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from gptlit.training.callbacks.interrupt import python_command, resume_command

from ..conftest import ROOT
from ..faults import run_script

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow

ARGS = ["model=tiny", "data.context_length=32", "trainer.max_epochs=2", "trainer.val_check_interval=20",
        "trainer.accelerator=cpu", "callbacks.loss_plot=null"]


def start(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def final_state(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 144  # 72 batches an epoch, 2 epochs
    return ckpt


def logged_steps(run_dir, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_resume_hint_names_the_python_that_runs_when_it_is_not_the_one_on_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    venv_python = tmp_path / ".venv" / "bin" / "python"
    monkeypatch.setattr(sys, "executable", str(venv_python))
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/python")
    assert resume_command("train.py", ["model=tiny"], tmp_path / "last.ckpt", tmp_path).startswith(
        ".venv/bin/python train.py model=tiny ckpt_path=")
    monkeypatch.setattr(shutil, "which", lambda name: str(venv_python))  # an activated environment
    assert python_command() == "python"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, verdict_path):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    proc = start(*ARGS, f"data.path={verdict_path}", f"hydra.run.dir={run_dir}")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return final_state(run_dir), [line for line in out.replace("\r", "\n").splitlines() if line.startswith("Ep ")]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, verdict_path, uninterrupted, signum):
    expected, expected_lines = uninterrupted
    run_dir = tmp_path / "run"
    proc = start(*ARGS, f"data.path={verdict_path}", f"hydra.run.dir={run_dir}")
    lines = []
    for line in proc.stdout:  # wait until the run is well into its first epoch
        lines += [part.strip() for part in line.split("\r") if part.startswith("Ep ")]
        if "Ep 1 (Step 000020)" in line:
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    lines += [part for part in out.replace("\r", "\n").splitlines() if part.startswith("Ep ")]
    assert proc.returncode == 128 + signum, err[-2000:]
    # Said at once, before the wait: which file is being written, how large, and that Ctrl-C again keeps the old one.
    assert re.search(r"\nwriting \S+/checkpoints/last\.ckpt \(about 38\.9 MB\); Ctrl-C again stops at once and "
                     r"keeps the previous checkpoint \.\.\.\n", err), err[-2000:]
    match = re.search(r"Interrupted at step (\d+); checkpoint written to (\S+)\. Resume with:\n  (.+)", err)
    assert match, err[-2000:]
    step = int(match.group(1))
    assert 20 <= step < 72
    assert torch.load(match.group(2), weights_only=True)["global_step"] == step

    command = shlex.split(match.group(3))
    # The interpreter that ran the test (.venv/bin/python where it is not the `python` on PATH), then the script.
    assert command[0] == python_command() and command[1] == "train.py"
    # The step the signal stopped at is logged like every other: no gap in TensorBoard before the resume.
    assert max(logged_steps(run_dir, "train/batch_loss")) == step - 1
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Its own checkpoint directory is where a resumed run belongs: no warning that it is not empty.
    assert "exists and is not empty" not in resumed.stderr
    # The run's log holds the resume hint, and the resumed run's lines after it.
    log = (run_dir / "train.log").read_text()
    assert f"Resume with:\n  {match.group(3)}\n" in log
    assert log.rindex("Ep 2 (Step 000140)") > log.index("Resume with:")
    lines += [part for part in resumed.stdout.replace("\r", "\n").splitlines() if part.startswith("Ep ")]

    state = final_state(run_dir)
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(state["state_dict"][name], tensor), name
    for a, b in zip(state["optimizer_states"][0]["state"].values(), expected["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert lines == expected_lines


def test_run_killed_after_an_epoch_resumes_from_its_end(tmp_path, verdict_path, uninterrupted):
    """kill -9 mid-epoch 2 (no handler runs, nothing is cleaned up): last.ckpt holds the end of epoch 1, and the
    run resumed from it ends as the uninterrupted one did. (The step cadence: tests/reliability/test_faults.py.)"""
    expected, expected_lines = uninterrupted
    run_dir = tmp_path / "run"
    args = [*ARGS, f"data.path={verdict_path}", f"hydra.run.dir={run_dir}"]
    killed = run_script("train.py", *args, faults=["kill-at-step:80"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file(), sorted(p.name for p in last.parent.iterdir())
    assert torch.load(last, weights_only=True)["global_step"] == 72
    lines = [line for line in killed.stdout.replace("\r", "\n").splitlines() if line.startswith("Ep ")]

    resumed = run_script("train.py", *args, f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines += [line for line in resumed.stdout.replace("\r", "\n").splitlines() if line.startswith("Ep ")]
    state = final_state(run_dir)
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(state["state_dict"][name], tensor), name
    assert lines == expected_lines
