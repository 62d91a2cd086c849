"""Pretrain a GPT model: `python train.py [model=gpt124m] [data.context_length=256] [key=value ...]`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gptlit.app.build import fit
from gptlit.app.cli import check_command_line, exit_on_user_error
from gptlit.app.launch import job_launches_itself
from gptlit.training.console import copy_warnings_to_log, show
from gptlit.training.interrupt import TrainingInterrupted, resume_command
from gptlit.training.precision import register_resolver

CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    copy_warnings_to_log()
    with exit_on_user_error(run_dir=cfg.run_dir), job_launches_itself():
        try:
            fit(cfg)
        except TrainingInterrupted as stop:
            command = resume_command("train.py", list(HydraConfig.get().overrides.task), stop.ckpt_path,
                                     Path(cfg.run_dir))
            show(f"Interrupted at step {stop.step}; checkpoint written to {stop.ckpt_path}. Resume with:\n"
                 f"  {command}", stream=sys.stderr)
            sys.exit(stop.exit_code)


if __name__ == "__main__":
    check_command_line(CONFIG_DIR, "train", sys.argv[1:])
    # conf/trainer/default.yaml asks for ${gptlit.precision:...}; it must exist before Hydra resolves the config.
    register_resolver()
    main()
