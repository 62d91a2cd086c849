"""Pretrain a GPT model: `python train.py [model=gpt124m] [data.context_length=256] [key=value ...]`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gptlit.cli import check_group_choices, exit_on_user_error
from gptlit.files import SafeCheckpointIO
from gptlit.interrupt import TrainingInterrupted, resume_command
from gptlit.launch import job_launches_itself
from gptlit.model import GPTConfig
from gptlit.module import GPTLitModule
from gptlit.precision import register_resolver
from gptlit.weights import check_fits, read_weights

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
# conf/trainer/default.yaml asks for ${gptlit.precision:...}; it must exist before Hydra resolves the config.
register_resolver()


def model_config(model: DictConfig) -> tuple[GPTConfig, str | None]:
    """The model group as GPTConfig, and model.init_from: the weights to start from, which is no
    architecture setting, so GPTConfig never sees it."""
    spec = OmegaConf.to_container(model, resolve=True)
    init_from = spec.pop("init_from", None)
    return instantiate(spec), init_from


def train(cfg: DictConfig) -> L.Trainer:
    """Build every part from its config group and fit; returns the trainer for its metrics and paths."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        # Read and split the text now, so bad data is reported before a large model is built. One process per
        # machine: the others wait for it in Lightning's own prepare_data/setup order.
        datamodule.prepare_data()
        datamodule.setup("fit")
    # A missing, corrupt or unsafe checkpoint is reported before anything is built or written.
    resume_from = read_weights(cfg.ckpt_path) if cfg.ckpt_path else None
    config, init_from = model_config(cfg.model)
    module = GPTLitModule(config, optimizer=instantiate(cfg.optimizer), init_from=init_from, **cfg.module)
    if resume_from is not None:
        check_fits(module.model, resume_from)  # a checkpoint of another size names the model= that fits it
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=[SafeCheckpointIO()])
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    return trainer


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(run_dir=cfg.run_dir), job_launches_itself():
        try:
            train(cfg)
        except TrainingInterrupted as stop:
            command = resume_command("train.py", list(HydraConfig.get().overrides.task), stop.ckpt_path,
                                     Path(cfg.run_dir))
            print(f"Interrupted at step {stop.step}; checkpoint written to {stop.ckpt_path}. Resume with:\n"
                  f"  {command}", file=sys.stderr)
            sys.exit(stop.exit_code)


if __name__ == "__main__":
    check_group_choices(CONFIG_DIR, sys.argv[1:])
    main()
