"""A training run wired from its composed config: the one place where the config groups become objects.

``train.py``, the tests and ``bench/`` all build through here, so what they run is what users run. Each config
group maps onto one constructor (``_target_`` and its keyword arguments); the wiring below only hands the parts
to each other.
"""

from __future__ import annotations

import os
import warnings

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gptlit.training.checkpoint_io import SafeCheckpointIO
from gptlit.training.loggers import log_hyperparameters
from gptlit.training.module import GPTLitModule
from gptlit.weights.io import check_fits, check_same_config, read_resume_checkpoint


def quiet_known_warnings() -> None:
    """Lightning warnings about choices gptlit makes on purpose; every other warning still shows."""
    # The train-loss estimate shuffles on purpose (the book's evaluate_model reads the shuffled train loader).
    warnings.filterwarnings("ignore", message=r".*val_dataloader.*shuffling enabled")
    # Lightning looks for state on the dataloader; ours is on the datamodule (TextDataModule.state_dict).
    warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch ended")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, GPTLitModule, L.Trainer]:
    """The datamodule, module and trainer of a run, each from its config group; nothing is trained yet."""
    quiet_known_warnings()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        # Read and split the text now, so bad data is reported before a large model is built. One process per
        # machine: the others wait for it in Lightning's own prepare_data/setup order.
        datamodule.prepare_data()
        datamodule.setup("fit")
    # A missing, damaged, unsafe or weights-only checkpoint is reported before anything is built or written.
    # Mapped, not read into memory: Lightning restores it whole afterwards, optimizer state included.
    resume_from = read_resume_checkpoint(cfg.ckpt_path, mmap=True) if cfg.ckpt_path else None
    module = GPTLitModule(
        instantiate(cfg.model),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        init_from=cfg.init_from,
        **cfg.module,
    )
    if resume_from is not None:
        check_fits(module.model, resume_from)  # a checkpoint of another size names the model= that fits it
        check_same_config(module.model.cfg, resume_from)  # n_heads, drop_rate, ...: what shapes do not show
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=[SafeCheckpointIO()])
    return datamodule, module, trainer


def fit(cfg: DictConfig) -> L.Trainer:
    """Build the run and train it; returns the trainer for its metrics and paths."""
    datamodule, module, trainer = build(cfg)
    if trainer.logger:
        log_hyperparameters(trainer.logger, OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    return trainer
