"""Training of ``GPTModel`` with Lightning: the book's ``train_model_simple`` as a LightningModule."""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Mapping

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger

from gptlit.core.families import ModelConfig, build_model, model_config
from gptlit.core.tokenizer import load_tokenizer
from gptlit.errors import UserError
from gptlit.training.compile import CompiledForward
from gptlit.training.fsdp import shards_weights
from gptlit.training.nonfinite import NonFiniteGuard
from gptlit.console import show
from gptlit.weights.io import init_model

# Called with the model (gptlit.training.optimizer.AdamW takes it, to choose the parameters that decay).
OptimizerFactory = Callable[[torch.nn.Module], torch.optim.Optimizer]
# Called with the optimizer and the run's number of optimizer steps (gptlit.training.schedule.WarmupCosine).
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood over every position of the batch (the book's calc_loss_batch)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class GPTLitModule(L.LightningModule):
    """Trains a GPTModel; every evaluation estimates train and val loss in eval mode, like the book.

    Validation runs two loaders (see TextDataModule.val_dataloader): 0 is the train split, 1 the val split.
    Each loss is the unweighted mean of per-batch mean losses, the book's calc_loss_loader.
    """

    def __init__(
        self,
        model: ModelConfig | Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        init_from: str | None = None,
        on_nonfinite: str = "stop",
        scheduler: SchedulerFactory | None = None,
        clip_after_warmup: bool = False,
        tokenizer: str | None = None,
    ):
        """``on_nonfinite`` says what a NaN or infinite training loss does: "stop" the run (the checkpoints
        already written stay as they are) or "skip" the batch without an optimizer step.

        ``init_from`` starts from the weights of a file or a GPT-2 name (see gptlit.weights.io.init_model).

        ``scheduler`` sets the learning rate of every optimizer step; None keeps the optimizer's (the book's
        chapter 5). ``trainer.gradient_clip_val`` clips the global gradient norm; ``clip_after_warmup`` clips only
        from the scheduler's first step after warmup on, as the book's appendix D does.

        ``tokenizer`` (``tokenizer.path``) is the tokenizer of the data: bits per byte divide by the bytes its
        tokens stand for.

        The book's evaluation schedule is a callback, gptlit.book.schedule.BookSchedule."""
        super().__init__()
        self.nonfinite = NonFiniteGuard(on_nonfinite)
        config = model_config(model)
        self.model = init_model(config, init_from) if init_from else build_model(config)
        # Plain types only, so checkpoints load with torch.load(weights_only=True) and carry the model config
        # (the model's: init_from may have set qkv_bias).
        self.save_hyperparameters({"model": self.model.cfg.to_dict()})
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.clip_after_warmup = clip_after_warmup
        self.tokens_seen = 0
        # The book's (train_losses, val_losses, track_tokens_seen) with the step and epoch of each evaluation.
        self.history: list[dict[str, float]] = []
        self.tokenizer_path = tokenizer
        # Per split, one float32 [3] per validation batch: its mean loss (the book's estimate averages these), and
        # the nats and the UTF-8 bytes of its scored tokens (bits per byte). Kept on the device, read once per
        # evaluation; never float64, which Apple GPUs (MPS) do not have.
        self._eval_batches: list[list[torch.Tensor]] = [[], []]
        self._byte_lengths: torch.Tensor | None = None
        self._rng_states: dict[str, Any] | None = None
        self._mid_epoch = False
        self._compiled_forward: CompiledForward | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def configure_model(self) -> None:
        """Shard the model where the strategy shards (trainer=fsdp: gptlit.training.fsdp), on every rank, before
        the optimizer is built; everywhere else the model stays as it is."""
        if shards_weights(self.trainer):
            self.trainer.strategy.shard(self.model)

    def _forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The logits of training and validation steps: compiled under trainer.compile=true, eager otherwise.
        Generation calls ``self.model`` and stays eager either way (gptlit.training.compile)."""
        if not getattr(self.trainer, "compile_model", False):
            return self.model(inputs)
        if self._compiled_forward is None or self._compiled_forward.model is not self.model:
            # At the first step rather than when the module is built: by then the strategy has moved, wrapped or
            # sharded self.model, and the compiled code is made for the model that trains.
            self._compiled_forward = CompiledForward(self.model)
        return self._compiled_forward(inputs)

    def check_optimization(self) -> None:
        """Build the optimizer and the schedule once, and drop them, so that a bad setting (optimizer.lr=abc) is
        refused when the run is built, before the run writes anything; training builds its own in
        configure_optimizers. Cheap: the optimizers allocate their state at the first step."""
        optimizer = self._optimizer()
        if self.scheduler_factory:
            self.scheduler_factory(optimizer, total_steps=1)
        # The schedule wrote its initial rates into the parameter groups; nothing of this optimizer is kept.
        del optimizer

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            return torch.optim.AdamW(self.parameters(), lr=4e-4, weight_decay=0.1)
        return self.optimizer_factory(self.model)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = self._optimizer()
        if not self.scheduler_factory:  # None, or scheduler=none's empty group
            return optimizer
        # The whole run in optimizer steps: max_steps, or the epochs' batches over the accumulation.
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise UserError(
                "a learning-rate schedule needs the length of the run: set trainer.max_steps, trainer.max_epochs "
                "or trainer.max_tokens"
            )
        scheduler = self.scheduler_factory(optimizer, total_steps=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip by the global norm of all gradients (after DDP averaged them and mixed precision unscaled them),
        and log that norm, before clipping, as train/grad_norm at every optimizer step."""
        if gradient_clip_val is not None and gradient_clip_algorithm == "value":
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            gradient_clip_val = None
        if gradient_clip_val is not None and self.clip_after_warmup:
            scheduler = self.lr_schedulers()
            if scheduler is None:
                raise UserError("module.clip_after_warmup needs a scheduler with a warmup: set scheduler=cosine")
            if self.global_step < scheduler.warmup_steps:
                gradient_clip_val = None
        norm = global_grad_norm(self, gradient_clip_val)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # The x position Lightning would use anyway; without a "step" it adds an "epoch" scalar to the step's
        # metrics, and that chart would head TensorBoard's list, above the losses.
        self.log("step", float(self.global_step), batch_size=1)
        inputs, targets = batch
        loss = cross_entropy(self._forward(inputs), targets)
        tokens = inputs.numel() * self.trainer.world_size
        where = f"at step {self.global_step + 1} (epoch {self.current_epoch + 1}, batch {batch_idx + 1})"
        # Never a host read of the loss here (see gptlit.training.nonfinite): a bad step is skipped on the device.
        self.nonfinite.watch(loss, where, tokens)
        self.tokens_seen += tokens
        self.log("train/batch_loss", loss, prog_bar=True, batch_size=inputs.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # The rate this step uses, whether a scheduler set it or not. A Python float, which Lightning logs as the
        # nearest float32: a float64 tensor would be exact but cannot exist on an Apple GPU (MPS).
        self.log("train/lr", float(optimizer.param_groups[0]["lr"]), on_step=True, on_epoch=False, batch_size=1)
        # Optimizers of several parts (optimizer=muon: its matrices, AdamW's other parameters) log each part's.
        for group in optimizer.param_groups:
            if "name" in group:
                self.log(f"train/lr_{group['name']}", float(group["lr"]), on_step=True, on_epoch=False, batch_size=1)
        self.nonfinite.before_optimizer_step(optimizer)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.nonfinite.after_optimizer_step(getattr(optimizer, "optimizer", optimizer))

    def check_nonfinite(self) -> None:
        """Act on the non-finite losses seen since the last check (gptlit.training.nonfinite)."""
        self.tokens_seen -= self.nonfinite.check(lambda line: show(line, self))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.nonfinite.due(self.device):
            self.check_nonfinite()

    def on_train_epoch_end(self) -> None:
        self.check_nonfinite()

    def on_validation_epoch_start(self) -> None:
        self._eval_batches = [[], []]
        if self._byte_lengths is None or self._byte_lengths.device != self.device:
            self._byte_lengths = load_tokenizer(self.tokenizer_path).byte_lengths.to(self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0):
        inputs, targets = batch
        logits = self._forward(inputs)
        if self.trainer.world_size > 1 and bool(targets[0, 0] < 0):
            # A filler batch (gptlit.data.shard_sampler.PaddedWindows), no target to score: run only so that this
            # rank takes part in the other ranks' forward passes.
            return
        loss = cross_entropy(logits, targets)
        self._eval_batches[dataloader_idx].append(
            torch.stack([loss.detach().float(), *nats_and_bytes(logits, targets, self._byte_lengths)])
        )

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        train_loss, val_loss = self.record_evaluation()
        show(evaluation_line(self.current_epoch + 1, "Step", self.global_step, train_loss, val_loss), self)

    def record_evaluation(self) -> tuple[float, float]:
        """Reduce the sums of the validation steps over every rank, log them and add them to the history."""
        self.check_nonfinite()  # tokens_seen then leaves out skipped batches
        sums = self._sums_over_ranks([batch_sums(batches) for batches in self._eval_batches])
        train_loss, val_loss = (loss / count if count else float("nan") for loss, count, _, _ in sums)
        metrics = {
            "val/loss": val_loss,
            "train/loss": train_loss,
            "val/perplexity": math.exp(min(val_loss, 700.0)),
            "val/bpb": bits_per_byte(*sums[1][2:]),
            "train/tokens_seen": float(self.tokens_seen),
        }
        # "step" makes the logger record these at the optimizer step the console line shows.
        self.log_dict({**metrics, "step": float(self.global_step)}, batch_size=1)
        steps_per_epoch = self.trainer.num_training_batches / self.trainer.accumulate_grad_batches
        self.history.append(
            {
                "step": self.global_step,
                "epoch": self.global_step / max(steps_per_epoch, 1),
                "tokens_seen": self.tokens_seen,
                "train_loss": train_loss,
                "val_loss": val_loss,
            }
        )
        return train_loss, val_loss

    def _sums_over_ranks(self, sums: list[list[float]]) -> list[list[float]]:
        """Add up every rank's ``batch_sums``. Each rank's float64 sums travel as float32 pairs (MPS has no
        float64): the nearest float32 and the remainder, about 48 bits together. They are gathered rather than
        summed on the device, so that the host adds them in float64, close to what one process would get."""
        if self.trainer.world_size == 1:
            return sums  # untouched: the book's exact Python sums
        exact = np.asarray(sums, dtype=np.float64)
        high = exact.astype(np.float32)
        with np.errstate(invalid="ignore"):  # inf - inf: the high part carries the non-finite value alone
            low = np.nan_to_num(exact - high, nan=0.0).astype(np.float32)
        pairs = torch.from_numpy(np.stack([high, low])).to(self.device)
        gathered = [torch.empty_like(pairs) for _ in range(self.trainer.world_size)]
        torch.distributed.all_gather(gathered, pairs)
        every = torch.stack(gathered).cpu().numpy().astype(np.float64)
        return every.reshape(-1, *exact.shape).sum(axis=0).tolist()

    def on_fit_start(self) -> None:
        if isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
            # TensorBoard draws tags in separate charts; a custom layout overlays train and val loss in one.
            self.logger.experiment.add_custom_scalars(
                {"loss": {"train vs val": ["Multiline", ["train/loss", "val/loss"]]}}
            )
        if self._several_processes():
            # trainer.precision=auto is decided once per machine: the ranks Lightning starts inherit the first
            # process's choice (gptlit.planning.precision.training_precision), but srun and other machines' ranks
            # measure their own, and machines that measured differently would train one model in two precisions.
            chosen: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(chosen, str(self.trainer.precision))
            if len(set(chosen)) > 1:
                raise UserError(f"the ranks chose different precisions ({', '.join(sorted(set(chosen)))}) for "
                                f"trainer.precision=auto; set trainer.precision={chosen[0]} for every rank")
        if self.trainer.world_size > 1 and self.global_rank > 0 and self._rng_states is None:
            # seed_everything gave every rank the run's seed, so that all built the same initial weights; from
            # here on each rank draws its own dropout masks, or every rank would drop the same units. The data
            # order is the samplers' (seeded on their own and checkpointed), not these generators'. A resume
            # restores each rank's generators instead (on_load_checkpoint).
            seed = (torch.initial_seed() + self.global_rank) % 2**32
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)

    def _several_processes(self) -> bool:
        return self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_nonfinite()  # "stop" raises here, before anything is written
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["history"] = self.history
        checkpoint["rng_states"] = rng_states()
        if self._several_processes():
            # Every rank's generators (rank 0 writes the file): each draws its own dropout masks.
            every: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(every, checkpoint["rng_states"])
            checkpoint["rng_states_per_rank"] = every

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self.history = list(checkpoint.get("history", []))
        # Restored now for a resume at an epoch boundary, where the next epoch's shuffle is drawn next, and
        # again in on_train_start for a resume mid-epoch, after Lightning's first iter() over the train loader
        # (which draws a worker seed that the uninterrupted run did not draw at this point). Mid-epoch by the
        # batches: a run that trainer.max_steps ended mid-epoch saves its epoch as if it had ended, and Lightning
        # then reports the resume as one at an epoch's end.
        batches = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
        self._mid_epoch = bool(batches.get("current", {}).get("completed")) and not batches.get("is_last_batch")
        self._rng_states = checkpoint.get("rng_states")
        per_rank = checkpoint.get("rng_states_per_rank")
        if per_rank and len(per_rank) == self.trainer.world_size:
            self._rng_states = per_rank[self.global_rank]
        if self._rng_states is not None:
            set_rng_states(self._rng_states)

    def on_train_start(self) -> None:
        if self._rng_states is not None and (self._mid_epoch or self.trainer.fit_loop.restarted_mid_epoch):
            set_rng_states(self._rng_states)
        self._rng_states = None


def global_grad_norm(module: L.LightningModule, max_norm: float | None) -> torch.Tensor:
    """The norm of all gradients together, clipping them to ``max_norm`` first when it is set, with
    torch.nn.utils.clip_grad_norm_ as the book's appendix D calls it. Under FSDP each rank holds a shard of
    every gradient (a DTensor): torch adds the shards' squares across ranks, and every rank reads the whole."""
    if max_norm is None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None])
    else:
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm=max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def nats_and_bytes(logits: torch.Tensor, targets: torch.Tensor, byte_lengths: torch.Tensor) -> torch.Tensor:
    """[2] float32: the summed cross-entropy (nats) of the targets that stand for text, and their UTF-8 bytes.
    Special tokens (<|endoftext|>) count in neither, as nanochat's bits per byte has it. One batch's sums: float32
    holds them well (its bytes exactly, below 2**24); batch_sums adds the batches in float64 on the host."""
    with torch.no_grad():
        nats = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
        sizes = byte_lengths[targets.flatten()]
        text = sizes > 0
        return torch.stack([nats[text].sum(), sizes.sum().float()])


def batch_sums(batches: list[torch.Tensor]) -> list[float]:
    """[summed loss, batches, nats, bytes] of one split's validation batches (the module's ``_eval_batches``), in
    Python floats added batch by batch: the book's calc_loss_loader adds ``loss.item()`` so, and this reproduces its
    losses exactly, where a float32 sum on the device would not."""
    rows = torch.stack(batches).tolist() if batches else []
    return [sum(row[0] for row in rows), float(len(rows)), sum(row[1] for row in rows), sum(row[2] for row in rows)]


def bits_per_byte(nats: float, n_bytes: float) -> float:
    """Cross-entropy in bits per UTF-8 byte of text: comparable across tokenizers, unlike the loss per token."""
    return nats / math.log(2) / n_bytes if n_bytes else float("nan")


def evaluation_line(epoch: int, label: str, step: int, train_loss: float, val_loss: float) -> str:
    """The line the book prints for an evaluation, e.g. ``Ep 1 (Step 000005): Train loss 9.781, Val loss 9.933``."""
    return f"Ep {epoch} ({label} {step:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}"


def rng_states() -> dict[str, Any]:
    """Every random generator training draws from: dropout, shuffling, and Python/NumPy for user code."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # Plain lists rather than an ndarray: checkpoints must load with weights_only=True.
    numpy_state = [kind, keys.tolist(), pos, has_gauss, gauss]
    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
