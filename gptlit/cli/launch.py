"""Hydra multirun jobs that start DDP processes of their own.

Lightning starts the other ranks of a DDP run by re-running the script with the parent's command line plus
``hydra.run.dir=<parent's run dir>``. In a multirun job that command line is the whole sweep (``-m`` with
every value) and the run dir is not the job's folder, so each child would run the entire sweep again into a
sweep folder of its own. ``job_launches_itself`` makes the command line this job's overrides and the run dir
this job's folder while the job runs, and afterwards undoes what the launch left behind (the process group,
the rank variables that would make the next job believe its ranks were already started).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

import torch.distributed
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write


@contextlib.contextmanager
def job_launches_itself() -> Iterator[None]:
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hydra_cfg = HydraConfig.get()
    argv, environ = list(sys.argv), dict(os.environ)
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg):
        run_dir, hydra_cfg.run.dir = hydra_cfg.run.dir, hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = run_dir
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)
