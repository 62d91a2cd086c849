"""train.py: compose conf/train.yaml with the command line's overrides and train (gptlit.cli.build.fit)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gptlit.cli.build import fit
from gptlit.cli.command_line import CONFIG_DIR, check_command_line
from gptlit.cli.launch import job_launches_itself
from gptlit.cli.user_errors import exit_on_user_error
from gptlit.console import copy_warnings_to_log, show
from gptlit.training.callbacks.interrupt import TrainingInterrupted, resume_command
from gptlit.training.process_rank import started_as_global_zero


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    copy_warnings_to_log()
    with exit_on_user_error(run_dir=cfg.run_dir), job_launches_itself():
        try:
            fit(cfg)
        except TrainingInterrupted as stop:
            if not started_as_global_zero():
                sys.exit(stop.exit_code)  # every rank stopped; the first says where and how to resume
            command = resume_command("train.py", list(HydraConfig.get().overrides.task), stop.ckpt_path,
                                     Path(cfg.run_dir))
            show(f"Interrupted at step {stop.step}; checkpoint written to {stop.ckpt_path}. Resume with:\n"
                 f"  {command}", stream=sys.stderr)
            sys.exit(stop.exit_code)


def cli() -> None:
    check_command_line("train", sys.argv[1:])
    main()
