"""A training run wired from its composed config: the one place where the config groups become objects.

``train.py``, the tests and ``bench/`` all build through here, so what they run is what users run. Each config
group maps onto one constructor (``_target_`` and its keyword arguments); the wiring below only hands the parts
to each other.
"""

from __future__ import annotations

import re
import warnings
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import DictConfig, OmegaConf, open_dict

from gptlit.core.device import resolve_device_type, why_unavailable
from gptlit.core.tokenizer import load_tokenizer
from gptlit.errors import UserError, check_int
from gptlit.files import atomic_write
from gptlit.planning.precision import AUTO, training_precision
from gptlit.training.process_rank import started_as_global_zero
from gptlit.training.checkpoint_io import SafeCheckpointIO
from gptlit.training.fsdp import FullyShardedStrategy
from gptlit.training.loggers import log_hyperparameters
from gptlit.training.module import GPTLitModule
from gptlit.weights.io import check_fits, check_same_config, read_resume_checkpoint


# What GPTLitModule logs at each evaluation, already summed across ranks (GPTLitModule.on_validation_epoch_end).
EVALUATION_METRICS = ("val/loss", "train/loss", "val/perplexity", "val/bpb", "train/tokens_seen", "step")


def quiet_known_warnings(cfg: DictConfig) -> None:
    """Lightning warnings about choices gptlit makes on purpose; every other warning still shows."""
    # The train-loss estimate shuffles on purpose (the book's evaluate_model reads the shuffled train loader).
    warnings.filterwarnings("ignore", message=r".*val_dataloader.*shuffling enabled")
    # Lightning looks for state on the dataloader; ours is on the datamodule (TextDataModule.state_dict).
    warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch ended")
    # Lightning's own code calling a torch API that torch deprecated: nothing a user could act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Under DDP: the evaluation losses are reduced across ranks before they are logged, so sync_dist would
    # only average equal numbers.
    names = "|".join(re.escape(name) for name in EVALUATION_METRICS)
    warnings.filterwarnings("ignore", message=rf"It is recommended to use `self\.log\('({names})', \.\.\., sync_dist=True\)`")
    if cfg.ckpt_path and Path(cfg.ckpt_path).resolve().parent == Path(cfg.run_dir, "checkpoints").resolve():
        # Resuming in the run's own directory (the command an interrupted run prints): its checkpoints are there
        # on purpose. A new run into a used directory still gets the warning.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


INTEGER_KEYS = (
    ("max_epochs", -1, "an integer, -1 for no limit"),
    ("max_steps", -1, "an integer, -1 for no limit"),
    ("log_every_n_steps", 1, "a positive integer"),
    ("accumulate_grad_batches", 1, "a positive integer"),
    ("num_sanity_val_steps", -1, "an integer, -1 for all batches"),
    ("check_val_every_n_epoch", 1, "a positive integer or null"),
)
FRACTION_OR_COUNT_KEYS = ("val_check_interval", "limit_train_batches", "limit_val_batches")


def check_trainer(trainer: DictConfig) -> None:
    """Refuse, in one line naming the fix, a trainer this machine cannot run, before anything is built."""
    accelerator = str(trainer.get("accelerator", "auto"))
    missing = why_unavailable(accelerator)
    if missing:
        raise UserError(f"trainer.accelerator={accelerator} asks for a GPU, but {missing}; train on the CPU with "
                        "trainer=cpu, or use the default trainer, which picks the device this machine has")
    # Lightning asserts on these types deep inside fit(), after the run directory is made: check them first.
    for key, minimum, what in INTEGER_KEYS:
        if trainer.get(key) is not None:
            check_int(f"trainer.{key}", trainer[key], minimum, what)
    for key in FRACTION_OR_COUNT_KEYS:
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise UserError(f"trainer.{key} must be a number of batches or steps (an integer) or a fraction "
                            f"(0.0 to 1.0), got {value!r}")
    strategy = trainer.get("strategy")
    if lightning_fsdp1(strategy):
        raise UserError(f"trainer.strategy={strategy_name(strategy)} is Lightning's first FSDP, which gptlit does not "
                        "train with; use trainer=fsdp (FSDP2, gptlit.training.fsdp.FullyShardedStrategy)")
    if sharded(strategy) and resolve_device_type(accelerator) == "mps":
        raise UserError("trainer=fsdp runs on CUDA GPUs and on CPUs, not on Apple GPUs (no distributed backend for "
                        "MPS); train on one Apple GPU with trainer=mps, or on the CPU with trainer.accelerator=cpu")


def strategy_name(strategy) -> str:
    return strategy.get("_target_", "") if OmegaConf.is_dict(strategy) else str(strategy)


def strategy_class(strategy) -> type | None:
    if not OmegaConf.is_dict(strategy):
        return None
    try:
        return get_class(strategy.get("_target_", ""))
    except Exception:  # an unknown class is reported where Hydra instantiates it, with Hydra's message
        return None


def sharded(strategy) -> bool:
    """Whether the run shards its weights across ranks: trainer=fsdp (gptlit.training.fsdp)."""
    cls = strategy_class(strategy)
    return cls is not None and issubclass(cls, FullyShardedStrategy)


def lightning_fsdp1(strategy) -> bool:
    """Lightning's FSDPStrategy (torch's first FSDP, flat parameters), by class or by registry name ("fsdp",
    "fsdp_cpu_offload", ...)."""
    cls = strategy_class(strategy)
    if cls is not None:
        return issubclass(cls, FSDPStrategy)
    return str(strategy or "").lower().startswith("fsdp")


def apply_tokenizer(cfg: DictConfig) -> None:
    """Make the model's vocabulary the tokenizer's: model.vocab_size becomes its size rounded up to
    tokenizer.pad_vocab_to (model.vocab_used the size itself) and the model records the tokenizer's fingerprint.
    GPT-2's models with GPT-2's BPE keep the model group's 50257 (the book's) as it is; Llama 3 and Qwen3 groups
    name their own tokenizer's size (128,256, 151,936), which a model trained from scratch with another does not
    use."""
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    with open_dict(cfg):
        cfg.model.tokenizer = tokenizer.fingerprint
        if cfg.tokenizer.path is None and cfg.model.get("family", "gpt2") == "gpt2":
            return
        pad = cfg.tokenizer.get("pad_vocab_to") or 1
        check_int("tokenizer.pad_vocab_to", pad)
        cfg.model.vocab_size = -(-tokenizer.n_vocab // pad) * pad
        cfg.model.vocab_used = tokenizer.n_vocab


def decide_precision(cfg: DictConfig) -> None:
    """Replace trainer.precision=auto by the precision measured for this run (gptlit.planning.precision), in the
    config and in the run's .hydra/config.yaml, so the record says what was used."""
    if str(cfg.trainer.precision) != AUTO:
        return
    chosen = training_precision(AUTO, str(cfg.trainer.accelerator), cfg.model.emb_dim, cfg.model.vocab_size,
                                cfg.data.context_length, cfg.data.batch_size)
    with open_dict(cfg):
        cfg.trainer.precision = chosen
    record(cfg, {"trainer.precision": chosen})


def record(cfg: DictConfig, decided: dict[str, object]) -> None:
    """Write what the run decided while it was built (``decided``: dotted keys) into its .hydra/config.yaml, which
    Hydra saved before, so the record says what the run used."""
    saved = Path(cfg.run_dir, ".hydra", "config.yaml")
    if not saved.is_file() or not started_as_global_zero():
        return
    config = OmegaConf.load(saved)
    with open_dict(config):
        for key, value in decided.items():
            OmegaConf.update(config, key, value)
    with atomic_write(saved, "w") as f:
        f.write(OmegaConf.to_yaml(config))


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, GPTLitModule, L.Trainer]:
    """The datamodule, module and trainer of a run, each from its config group; nothing is trained yet."""
    check_trainer(cfg.trainer)
    quiet_known_warnings(cfg)
    apply_tokenizer(cfg)
    if cfg.tokenizer.path is not None:
        # Here, not in apply_tokenizer: plan.py applies the tokenizer too, and its run_dir is wherever it runs.
        record(cfg, {f"model.{k}": cfg.model[k] for k in ("vocab_size", "vocab_used", "tokenizer")})
    decide_precision(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    # Prepared once for the whole run, by global rank 0 (Lightning's default is once per machine): several nodes
    # that share data.cache_dir (a cluster's shared filesystem) tokenize it once; a rank that cannot see the
    # cache makes its own in setup.
    datamodule.prepare_data_per_node = False
    if started_as_global_zero():
        # Read and split the text now, so bad data is reported before a large model is built. The other ranks
        # wait for it in Lightning's own prepare_data/setup order.
        datamodule.prepare_data()
        datamodule.setup("fit")
    # A missing, damaged, unsafe or weights-only checkpoint is reported before anything is built or written.
    # Mapped, not read into memory: Lightning restores it whole afterwards, optimizer state included.
    resume_from = read_resume_checkpoint(cfg.ckpt_path, mmap=True) if cfg.ckpt_path else None
    # Sharded runs build the model once: rank zero in full, the other ranks on the meta device, where it takes
    # no memory, until the strategy shards it and hands each rank its part of rank zero's weights.
    with torch.device("meta") if sharded(cfg.trainer.get("strategy")) and not started_as_global_zero() else nullcontext():
        module = instantiate(cfg.module)
    module.check_optimization()
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
