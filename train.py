"""Pretrain a GPT model: `python train.py [model=gpt124m] [data.context_length=256] [key=value ...]`."""

from __future__ import annotations

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gptlit.errors import exit_on_user_error
from gptlit.module import GPTLitModule
from gptlit.precision import register_resolver

# conf/trainer/default.yaml asks for ${gptlit.precision:...}; it must exist before Hydra resolves the config.
register_resolver()


def train(cfg: DictConfig) -> L.Trainer:
    """Build every part from its config group and fit; returns the trainer for its metrics and paths."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    module = GPTLitModule(instantiate(cfg.model), optimizer=instantiate(cfg.optimizer))
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    return trainer


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        train(cfg)


if __name__ == "__main__":
    main()
