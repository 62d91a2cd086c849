"""Serving a model over HTTP: OpenAI's API with continuous batching, and a chat page (serve.py, docs/serving.md).

Nothing here imports Lightning or Hydra: serve.py turns its Hydra config into a ServeSettings and calls
``make_app``.
"""

from __future__ import annotations

from gptlit.core.model import GPTModel
from gptlit.core.tokenizer import Tokenizer
from gptlit.serving.engine import Engine
from gptlit.serving.settings import ServeSettings


def make_app(model: GPTModel, tokenizer: Tokenizer, settings: ServeSettings):
    """The FastAPI app serving ``model`` with the tokenizer it was trained with; its decoding thread starts and
    stops with the app."""
    from gptlit.serving.api import create_app

    engine = Engine(model, settings.max_batch, settings.max_queue, settings.eos_id)
    return create_app(engine, tokenizer, settings)
