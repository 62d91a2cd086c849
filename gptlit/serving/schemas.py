"""The request bodies of OpenAI's completions and chat completions, as pydantic models.

pydantic refuses a wrong type or an out-of-range value before any handler runs (errors.py turns that into a
400). Ranges: temperature 0-2 and top_p (0, 1] as OpenAI; top_k 0-200 (0: off) as nanochat; max_tokens 1-4096
(and the context, checked later since it depends on the model). Fields OpenAI has and this server does not
implement are accepted at their neutral value and refused otherwise, rather than silently ignored.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, Field, field_validator

# torch's generator takes any 64-bit seed, signed or not.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampled(BaseModel):
    """What both endpoints share."""

    model: str
    max_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=200)  # not OpenAI's: the openai client sends it via extra_body
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's extra field: the generated token ids beside the text (choices[].token_ids).
    return_token_ids: bool = False

    def unsupported(self) -> str | None:
        """The first field set to something this server does not do, or None."""
        if self.n != 1:
            return "n"
        if self.presence_penalty or self.frequency_penalty:
            return "presence_penalty" if self.presence_penalty else "frequency_penalty"
        if self.logit_bias:
            return "logit_bias"
        return None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(Sampled):
    prompt: Union[str, list[int], list[str]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> str | None:
        for name in ("echo", "logprobs", "suffix"):
            if getattr(self, name):
                return name
        if self.best_of not in (None, 1):
            return "best_of"
        return super().unsupported()


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    # "developer" is what newer OpenAI models call the system message.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    # The newer name of max_tokens for chat.
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    logprobs: bool | None = None
    tools: list | None = None

    @field_validator("messages")
    @classmethod
    def _roles(cls, messages: list[Message]) -> list[Message]:
        if messages[-1].role == "assistant":
            raise ValueError("the last message must be the user's (or the system's), not the assistant's")
        return messages

    def unsupported(self) -> str | None:
        if self.logprobs:
            return "logprobs"
        if self.tools:
            return "tools"
        return super().unsupported()
