"""Hydra multirun: one folder per job under one sweep folder, each with its own TensorBoard run."""

from __future__ import annotations

import pytest

import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_two_job_sweep_of_ddp_runs_writes_one_folder_per_job(tmp_path, verdict_path):
    # Each job is itself a 2-process DDP run: its second rank must run this job only, in this job's folder,
    # not the whole sweep again into a sweep folder of its own.
    cmd = [
        sys.executable, str(ROOT / "train.py"), "-m", "model=tiny", "optimizer.lr=1e-4,1e-3",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=2",
        f"data.path={verdict_path}", "data.context_length=32", "callbacks.sample_text=null",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    assert [p.name for p in tmp_path.iterdir()] == ["multirun"]
    (sweep_dir,) = [p for p in (tmp_path / "multirun").glob("*/*")]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [j.name.split("_")[0] for j in jobs] == ["0", "1"]
    for job, lr in zip(jobs, (1e-4, 1e-3)):
        assert f"optimizer.lr={lr}" in job.name
        assert OmegaConf.load(job / ".hydra" / "config.yaml").optimizer.lr == lr
        assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["last.ckpt"]
        (events,) = (job / "tensorboard").glob("events.out.tfevents.*")
        run = EventAccumulator(str(events)).Reload()
        assert [e.step for e in run.Scalars("train/batch_loss")] == [0, 1]
