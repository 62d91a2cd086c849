"""The text sample after every epoch: the book's generate_and_print_sample, on one line and in TensorBoard."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from gptlit.console import show
from gptlit.core.device import model_device
from gptlit.core.generation import DecodingConfig, generate
from gptlit.core.model import GPTModel
from gptlit.core.tokenizer import load_tokenizer, text_to_token_ids, token_ids_to_text
from gptlit.training.full_model import full_model
from gptlit.training.module import GPTLitModule


class SampleText(L.Callback):
    """Generate from ``start_context`` after every epoch, print it on one line and log it to TensorBoard.

    Every rank takes part (see gptlit.training.full_model: sharded weights are gathered collectively); global
    rank zero samples and prints.
    """

    def __init__(
        self,
        start_context: str = "Every effort moves you",
        max_new_tokens: int = 50,
        decoding: DecodingConfig | None = None,
        seed: int = 123,
        tokenizer: str | None = None,
    ):
        self.start_context = start_context
        self.max_new_tokens = max_new_tokens
        self.decoding = decoding or DecodingConfig()
        self.seed = seed
        self.tokenizer_path = tokenizer  # tokenizer.path; None: GPT-2's BPE
        # Sampling draws from generators of its own, one per device it samples on, so the decoding settings never
        # change the training run: neither the CPU's global generator nor a GPU's, which drive dropout.
        self._generators: dict[str, torch.Generator] = {}
        self._restored: dict[str, torch.Tensor] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            generator = torch.Generator(device=device).manual_seed(self.seed)
            if key in self._restored:
                generator.set_state(self._restored.pop(key))
            self._generators[key] = generator
        return self._generators[key]

    def sample(self, model: GPTModel) -> str:
        was_training = model.training
        model.eval()
        try:
            device = model_device(model)
            tokenizer = load_tokenizer(self.tokenizer_path)
            idx = text_to_token_ids(self.start_context, tokenizer).to(device)
            out = generate(model, idx, self.max_new_tokens, context_size=model.cfg.context_length,
                           decoding=self.decoding, generator=self.generator(device))
        finally:
            model.train(was_training)
        return token_ids_to_text(out.cpu(), tokenizer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        model = full_model(trainer, pl_module)
        if model is None:
            return
        text = self.sample(model)
        show(text.replace("\n", " "), pl_module)
        if isinstance(trainer.logger, TensorBoardLogger):
            trainer.logger.experiment.add_text("sample", text, trainer.global_step)

    def state_dict(self) -> dict:
        return {"generators": {key: g.get_state() for key, g in self._generators.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self._generators.clear()
        self._restored = dict(state_dict.get("generators", {}))
