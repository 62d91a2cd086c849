"""Lightning's Trainer with the batch and the length of a run measured in tokens.

``data.batch_size`` is the micro-batch of one device. A step of ``tokens_per_step`` tokens is made of
micro-batches of ``micro_batch_size x context_length`` tokens on each of the ``devices x nodes`` ranks,
accumulated over ``tokens_per_step / (micro-batch tokens x ranks)`` batches before one optimizer step (only the
last of them synchronises gradients under DDP: Lightning skips the all-reduce of the others). ``max_tokens``
ends the run after that many training tokens, rounded up to whole optimizer steps. ``val_check_interval``
(an integer) counts optimizer steps whatever the accumulation, as it does without one. ``compile`` asks the
module to run its training and evaluation forward through torch.compile (gptlit.training.compile).
"""

from __future__ import annotations

import math

import lightning as L

from gptlit.errors import UserError, check_int


def whole_number(name: str, value) -> int | None:
    """An integer setting that may come from the command line as a float (1e9) or with underscores."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    check_int(name, value, what="a positive integer or null")
    return value


def accumulation_steps(tokens_per_step: int | None, micro_batch_size: int, context_length: int, world_size: int,
                       accumulate_grad_batches: int = 1) -> int:
    """Micro-batches per optimizer step: ``tokens_per_step`` over the tokens of one micro-batch on every rank, which
    must divide it; without ``tokens_per_step``, Lightning's ``accumulate_grad_batches``."""
    if tokens_per_step is None:
        return accumulate_grad_batches
    per_micro_batch = micro_batch_size * context_length * world_size
    if tokens_per_step % per_micro_batch:
        raise UserError(
            f"trainer.tokens_per_step={tokens_per_step} is not a multiple of the tokens of one micro-batch "
            f"on all ranks, data.batch_size x data.context_length x devices x nodes = {micro_batch_size} x "
            f"{context_length} x {world_size} = {per_micro_batch}; use a multiple of {per_micro_batch}"
        )
    accumulate = tokens_per_step // per_micro_batch
    if accumulate_grad_batches not in (1, accumulate):
        raise UserError(
            f"trainer.accumulate_grad_batches={accumulate_grad_batches} contradicts "
            f"trainer.tokens_per_step={tokens_per_step}, which needs {accumulate}; set only one of them"
        )
    return accumulate


class Trainer(L.Trainer):
    def __init__(
        self,
        *args,
        tokens_per_step: int | float | None = None,
        max_tokens: int | float | None = None,
        micro_batch_size: int = 1,
        context_length: int = 1,
        compile: bool = False,
        **kwargs,
    ):
        if not isinstance(compile, bool):
            # "trainer.compile=maybe" reaches here as a string, and any non-empty string would be true.
            raise UserError(f"trainer.compile must be true or false, got {compile!r}; set trainer.compile=true "
                            "or trainer.compile=false")
        tokens_per_step = whole_number("trainer.tokens_per_step", tokens_per_step)
        max_tokens = whole_number("trainer.max_tokens", max_tokens)
        if max_tokens is not None and kwargs.get("max_steps", -1) not in (-1, None):
            raise UserError(
                "trainer.max_tokens and trainer.max_steps both set the length of the run; set one of them "
                "(the other to null / -1)"
            )
        super().__init__(*args, **kwargs)
        # Read by GPTLitModule, which compiles its forward at first use, after the strategy has placed the model.
        self.compile_model = compile
        per_micro_batch = micro_batch_size * context_length * self.world_size
        self.accumulate_grad_batches = accumulation_steps(tokens_per_step, micro_batch_size, context_length,
                                                          self.world_size, self.accumulate_grad_batches)
        if isinstance(self.val_check_interval, int):
            self.val_check_interval *= self.accumulate_grad_batches
        self.tokens_per_step = per_micro_batch * self.accumulate_grad_batches
        self.max_tokens = max_tokens
        if max_tokens is not None:
            # The budget is the length of the run: epochs go on until it is spent.
            self.fit_loop.max_epochs = -1
            self.fit_loop.epoch_loop.max_steps = math.ceil(max_tokens / self.tokens_per_step)
