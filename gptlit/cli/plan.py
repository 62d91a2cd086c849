"""plan.py: what a training run will cost, before it runs; the script at the root calls cli()."""

from __future__ import annotations

import math
import sys

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gptlit.cli.build import apply_tokenizer, sharded
from gptlit.cli.command_line import CONFIG_DIR, check_group_choices
from gptlit.cli.user_errors import exit_on_user_error, fail
from gptlit.core.device import pick_device, precision_dtype
from gptlit.planning.plan import (
    RunShape, batches_per_evaluation, describe, evaluation_count, plan_run, process_rss, steps_for,
)
from gptlit.planning.precision import training_precision
from gptlit.training.trainer import accumulation_steps, whole_number

def compose_train(overrides: list[str]) -> DictConfig:
    """conf/train.yaml with the overrides, composed as train.py composes it (without a run directory)."""
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, "run_dir=."])
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        fail(f"{str(err).splitlines()[0]} (overrides are those of train.py, e.g. model=gpt124m data.batch_size=4)")
    return cfg


def nodes_of(trainer: DictConfig) -> int:
    return int(trainer.get("num_nodes", 1) or 1)


def devices_of(trainer: DictConfig, device: torch.device) -> int:
    devices = trainer.devices
    if devices in ("auto", -1, "-1"):
        devices = torch.cuda.device_count() if device.type == "cuda" else 1
    count = len(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else int(devices)
    return count * nodes_of(trainer)


def plan(cfg: DictConfig) -> str:
    apply_tokenizer(cfg)  # the vocabulary follows a trained tokenizer, as in train.py
    model = instantiate(cfg.model)
    device = pick_device(str(cfg.trainer.accelerator))
    devices = devices_of(cfg.trainer, device)
    micro_batch = cfg.data.batch_size
    accumulation = accumulation_steps(whole_number("trainer.tokens_per_step", cfg.trainer.get("tokens_per_step")),
                                      micro_batch, model.context_length, devices,
                                      int(cfg.trainer.get("accumulate_grad_batches", 1) or 1))
    # The corpus is read as train.py reads it, for the epoch's length (a textfiles corpus is tokenized once).
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    steps_per_epoch = len(datamodule.train_set) // (micro_batch * devices) // accumulation or None
    baseline = process_rss()  # before the probe allocates anything: the process a run starts from
    precision = training_precision(cfg.trainer.precision, str(cfg.trainer.accelerator), model.emb_dim, model.vocab_size,
                                   cfg.data.context_length, micro_batch)
    tokens_per_step = micro_batch * model.context_length * devices * accumulation
    steps, budget = steps_for(cfg.trainer.max_steps, cfg.trainer.max_epochs, steps_per_epoch,
                              cfg.trainer.get("max_tokens"), tokens_per_step)
    # Evaluation reads both splits: the train split's batches (the book's estimate of the training loss) and
    # the val split's, each rank its share.
    book_schedule = (cfg.get("callbacks") or {}).get("book_schedule")
    evaluations = evaluation_count(steps, cfg.trainer.val_check_interval,
                                   book_schedule.get("eval_freq") if book_schedule else None)
    limit = book_schedule.get("eval_iter") if book_schedule else cfg.trainer.limit_val_batches
    eval_batches = sum(
        batches_per_evaluation(limit, math.ceil(len(windows) / micro_batch / devices))
        for windows in (datamodule.train_set, datamodule.val_set)
    )
    strategy = cfg.trainer.get("strategy")
    fsdp = sharded(strategy)
    run = plan_run(RunShape(
        config=model, micro_batch=micro_batch, devices=devices, accumulation=accumulation, device=device,
        precision=precision, autocast_dtype=precision_dtype(precision) if precision.endswith("-mixed") else None,
        optimizer_factory=instantiate(cfg.optimizer), steps=steps, steps_per_epoch=steps_per_epoch, budget=budget,
        baseline=baseline, evaluations=evaluations, eval_batches=eval_batches,
        muon=cfg.optimizer.get("_target_") == "gptlit.training.muon.MuonAdamW",
        shards=devices if fsdp else 1,
        checkpointing=fsdp and bool(strategy.get("activation_checkpointing", False)),
        # A CPU's devices are processes of one machine, in its memory together; each GPU has its own.
        local_processes=devices // nodes_of(cfg.trainer) if device.type == "cpu" else 1,
    ))
    return describe(run)


HELP = """\
python plan.py [group=option ...] [key=value ...]        (the overrides of train.py)

What a training run will cost before it runs, trained nothing: parameters, FLOPs per token, memory per device
(weights, gradients, AdamW state, activations, the predicted peak, and whether it fits what the device has
free), the device's measured matmul rate, a short probe of the real step, then the predicted tokens/s, MFU,
time per epoch and for the whole run; on a GPU also the largest micro-batch that fits. Under trainer=fsdp the
memory is one rank's: its shard of the weights, gradients and AdamW state, the full weights gathered while
they run, and the activations the recomputed blocks keep.

How long it takes: the probe times a few real steps (seconds for small models, a minute or more for the
largest on a CPU). The corpus is read as train.py reads it, to count an epoch's steps: a data=textfiles or
data=hf corpus is tokenized once into the token cache, which takes minutes for hundreds of MB the first time
and nothing afterwards (train.py reuses it).

== Settings that change the plan most (every key of python train.py --help works) ==
  model=gpt124m|gpt355m|gpt774m|gpt1558m|tiny        the model
  data.batch_size=N  data.context_length=N           the micro-batch
  trainer.tokens_per_step=N                          the global batch, by accumulation
  trainer.max_tokens=N | trainer.max_steps=N | trainer.max_epochs=N   the run's length
  trainer.precision=32-true|bf16-mixed               default auto: measured on this device
  trainer.devices=N  trainer.num_nodes=N             data-parallel ranks
  trainer=fsdp                                       the weights, gradients and AdamW state sharded across them
  experiment=NAME                                    a recipe (conf/experiment/)

== Examples ==
  python plan.py                                     the default run: GPT-2 124M on The Verdict
  python plan.py experiment=book_appendix_d
  python plan.py model=gpt1558m data.context_length=1024
  python plan.py model=gpt1558m data.context_length=1024 trainer=fsdp trainer.devices=8
  python plan.py model=tiny data=textfiles data.path=corpus/ trainer.max_tokens=1e7
"""


def main(argv: list[str]) -> None:
    if argv[:1] in (["--help"], ["-h"]):
        print(HELP, end="")
        return
    check_group_choices(CONFIG_DIR, argv)
    with exit_on_user_error():
        print(plan(compose_train(argv)))


def cli() -> None:
    main(sys.argv[1:])
