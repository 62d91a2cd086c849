"""What the server allows and assumes, checked once at start (serve.yaml's keys, without Hydra)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gptlit.errors import UserError, check_int
from gptlit.serving.chat_template import ChatTemplate

LONG_PROMPT = ("refuse", "truncate")


@dataclass
class Limits:
    """Per-request caps, nanochat's by default: a request past them gets a 400, not a server busy for minutes."""

    max_tokens: int = 4096  # beside the context: prompt + max_tokens must fit in it
    max_messages: int = 500
    max_message_chars: int = 8000
    max_total_chars: int = 32000
    max_stop: int = 4  # stop strings per request, as OpenAI allows
    max_stop_chars: int = 100

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            check_int(f"limits.{name}", value)


@dataclass
class ServeSettings:
    model_name: str
    api_key: str | None = None
    max_batch: int = 8
    max_queue: int = 32
    # A request naming no max_tokens gets this many, or what the context leaves, whichever is fewer.
    default_max_tokens: int = 64
    # OpenAI's defaults: sampling at temperature 1 over the whole distribution.
    default_temperature: float = 1.0
    # A prompt with its max_tokens beyond the context: refuse it (400), or keep its last tokens and say so.
    long_prompt: str = "refuse"
    eos_id: int | None = 50256
    limits: Limits = field(default_factory=Limits)
    chat: ChatTemplate = field(default_factory=ChatTemplate)

    def __post_init__(self) -> None:
        if not self.model_name or not isinstance(self.model_name, str):
            raise UserError(f"model_name must be a non-empty string, got {self.model_name!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise UserError("api_key must be a non-empty string, or null for none")
        check_int("max_batch", self.max_batch)
        check_int("max_queue", self.max_queue, minimum=0, what="an integer >= 0")
        check_int("default_max_tokens", self.default_max_tokens)
        if isinstance(self.default_temperature, bool) or not isinstance(self.default_temperature, (int, float)) \
                or not 0 <= self.default_temperature <= 2:
            raise UserError(f"default_temperature must be in [0, 2], got {self.default_temperature!r}")
        if self.long_prompt not in LONG_PROMPT:
            raise UserError(f"long_prompt must be one of {', '.join(LONG_PROMPT)}, got {self.long_prompt!r}")
        if self.eos_id is not None:
            check_int("eos_id", self.eos_id, minimum=0, what="a token id >= 0 or null")
