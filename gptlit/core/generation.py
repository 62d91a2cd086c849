"""Decoding: the book's greedy, temperature and top-k sampling (section 5.3), plus top-p, with a KV cache.

Every entry point follows the book's ``generate``: the model sees the last ``context_size`` tokens, a step
picks one token per row, and ``eos_id`` ends a row without being appended. The KV cache changes how the
logits are computed, never which tokens come out: greedy decoding and seeded sampling give the tokens of the
uncached loop (``use_cache=False``), which is the book's loop.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from gptlit.errors import UserError, check_int
from gptlit.core.device import model_device
from gptlit.core.kv_cache import KVCache
from gptlit.core.families import MODEL_CLASSES
from gptlit.core.model import GPTModel


@dataclass
class DecodingConfig:
    """How to pick each next token; temperature 0 means greedy argmax."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    eos_id: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise UserError(f"decoding.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None:
            check_int("decoding.top_k", self.top_k, what="a positive integer or null")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UserError(f"decoding.top_p must be in (0, 1] or null, got {self.top_p}")
        if self.temperature == 0 and (self.top_k is not None or self.top_p is not None):
            # Greedy decoding takes the most likely token whatever the filters keep: they would be ignored.
            raise UserError("decoding.top_k and decoding.top_p only act when sampling, but decoding.temperature is 0 "
                            "(greedy); set decoding.temperature above 0 (decoding=sample sets 1.4), or drop them")

    def check_vocab(self, vocab_size: int) -> None:
        if self.top_k is not None and self.top_k > vocab_size:
            raise UserError(f"decoding.top_k ({self.top_k}) exceeds the vocabulary size ({vocab_size}); use at most {vocab_size} or null")

    def to_dict(self) -> dict:
        return asdict(self)


def top_k_filter(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Set every logit below the k-th largest to -inf (the book's top-k, ties at the k-th kept)."""
    if top_k is None:
        return logits
    kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float | None) -> torch.Tensor:
    """Set every logit outside the smallest set of most likely tokens whose probability reaches ``top_p`` to -inf."""
    if top_p is None or top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # Drop a token when the tokens ranked above it already reach top_p; the first token always stays.
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sampling_logits(logits: torch.Tensor, decoding: DecodingConfig) -> torch.Tensor:
    """The logits a sampled token is drawn from (softmax of them): top-k on the raw logits as in the book, then the
    temperature, then the nucleus of the tempered distribution (the order of transformers and litgpt)."""
    logits = top_k_filter(logits, decoding.top_k)
    return top_p_filter(logits.float() / decoding.temperature, decoding.top_p)


def next_token(
    logits: torch.Tensor, decoding: DecodingConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one token per row of [batch, vocab] logits; returns [batch, 1]."""
    if decoding.temperature > 0.0:
        probs = torch.softmax(sampling_logits(logits, decoding), dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)
    # Greedy: the most likely token survives any top-k or top-p filter, so none is applied.
    return torch.argmax(logits, dim=-1, keepdim=True)


LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def _uncached_logits(model: nn.Module, context_size: int) -> LogitsFn:
    """The book's step: run the whole (cropped) context through the model."""
    return lambda idx: model(idx[:, -context_size:])[:, -1, :]


def _cached_logits(model: GPTModel, batch_size: int, context_size: int, start: torch.Tensor,
                   capacity: int) -> LogitsFn:
    """A step that runs only the newest token, attending to the cached keys and values of the others."""
    cache = KVCache.for_model(model, batch_size, capacity=capacity)

    def logits(idx: torch.Tensor) -> torch.Tensor:
        n = idx.shape[1]
        if cache.length == 0 or n != cache.length + 1 or n > context_size:
            # The first step, and every step once the context is full: the book crops the context to its
            # last context_size tokens, which shifts every token's position, so the cache is rebuilt from the
            # cropped window (exactly what the uncached loop computes).
            window = idx[:, -context_size:]
            cache.reset(start=(start - (n - window.shape[1])).clamp_min(0))
            return model(window, cache=cache)[:, -1, :]
        return model(idx[:, -1:], cache=cache)[:, -1, :]

    return logits


def _without_padding(logits_of: LogitsFn, used: int) -> LogitsFn:
    return lambda idx: logits_of(idx)[:, :used]


def _cacheable(model: nn.Module) -> GPTModel | None:
    # torch.compile wraps the module; the cache runs on the eager module underneath.
    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, MODEL_CLASSES) else None


def check_request(n_prompt: int, max_new_tokens: int, context_size: int) -> None:
    """Refuse what cannot be generated; warn when the book's crop will drop the start of the prompt."""
    check_int("max_new_tokens", max_new_tokens, minimum=0, what="an integer >= 0")
    if n_prompt == 0:
        raise UserError('the prompt is empty; pass some text, e.g. prompt="Every effort moves you"')
    if n_prompt > context_size:
        warnings.warn(
            f"the prompt has {n_prompt} tokens but the context holds {context_size}; "
            f"only its last {context_size} tokens are seen by the model",
            UserWarning,
            stacklevel=4,
        )


def stream(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int | None = None,
    decoding: DecodingConfig | None = None,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
    use_cache: bool | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row ([batch, 1]) as soon as it is picked.

    ``idx`` [batch, n] holds the prompts (long prompts are cropped to their last ``context_size`` tokens, as
    in the book, with a warning); ``start`` [batch] counts each row's left padding (see ``generate_batch``).
    A row that produced ``eos_id`` keeps receiving ``eos_id`` until every row has; the step at which the last
    row ends yields nothing, as the book does not append eos_id. Bad values are refused here, before the
    first token is asked for.
    """
    decoding = decoding or DecodingConfig()
    cached = _cacheable(model) if use_cache is not False else None
    if use_cache and cached is None:
        raise TypeError(f"{type(model).__name__} has no KV cache; pass use_cache=False")
    if context_size is None:
        if cached is None:
            raise TypeError("context_size is required for a model without a GPTConfig")
        context_size = cached.cfg.context_length
    check_request(idx.shape[1], max_new_tokens, context_size)
    batch_size = idx.shape[0]
    start = torch.zeros(batch_size, dtype=torch.long, device=idx.device) if start is None else start.to(idx.device)
    if cached is not None:
        if context_size > cached.cfg.context_length:
            raise UserError(f"context_size {context_size} exceeds the model's context_length {cached.cfg.context_length}")
        decoding.check_vocab(cached.cfg.vocab_size)
        # No window is ever longer than the whole text: a 1B model's 131,072-token context would otherwise
        # allocate gigabytes of cache for a short reply.
        capacity = min(context_size, idx.shape[1] + max_new_tokens)
        logits_of = _cached_logits(cached, batch_size, context_size, start, capacity)
    elif bool(start.any()):
        raise ValueError("left-padded prompts need the KV cache (use_cache=True)")
    else:
        logits_of = _uncached_logits(model, context_size)
    config = getattr(_cacheable(model), "cfg", None)
    if config is not None and config.vocab_used is not None and config.vocab_used < config.vocab_size:
        # The vocabulary rounded up for speed: its padding ids are no tokens and are never picked.
        logits_of = _without_padding(logits_of, config.vocab_used)
    return _decode(logits_of, idx, max_new_tokens, decoding, generator)


@torch.inference_mode()
def _decode(
    logits_of: LogitsFn, idx: torch.Tensor, max_new_tokens: int, decoding: DecodingConfig, generator: torch.Generator | None
) -> Iterator[torch.Tensor]:
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for step in range(max_new_tokens):
        logits = logits_of(idx)
        if step == 0:
            decoding.check_vocab(logits.shape[-1])
        idx_next = next_token(logits, decoding, generator)
        if decoding.eos_id is not None:
            idx_next = idx_next.masked_fill(finished.unsqueeze(1), decoding.eos_id)
            finished |= idx_next.squeeze(1) == decoding.eos_id
            if finished.all():
                return
        idx = torch.cat((idx, idx_next), dim=1)
        yield idx_next


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    *,
    decoding: DecodingConfig | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool | None = None,
) -> torch.Tensor:
    """Append up to ``max_new_tokens`` tokens to ``idx`` ([batch, n]) with the book's semantics.

    The positional parameters are those of the book's ``generate`` (section 5.3); ``decoding`` passes a whole
    DecodingConfig (top-p included) instead of ``temperature``, ``top_k`` and ``eos_id``. ``generator`` lets a
    caller sample without touching the global random state. ``use_cache`` None uses the KV cache when the model
    is one of gptlit's models; False runs the book's uncached loop, which works for any model.
    """
    if decoding is None:
        decoding = DecodingConfig(temperature=temperature, top_k=top_k, eos_id=eos_id)
    elif (temperature, top_k, eos_id) != (0.0, None, None):
        raise TypeError("pass either decoding= or temperature/top_k/eos_id, not both")
    new = list(stream(model, idx, max_new_tokens, context_size, decoding, generator, use_cache=use_cache))
    return torch.cat([idx, *new], dim=1) if new else idx


def generate_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    context_size: int | None = None,
    decoding: DecodingConfig | None = None,
    generator: torch.Generator | None = None,
    pad_id: int = 0,
) -> list[list[int]]:
    """Generate for prompts of different lengths in one batch (left-padded); returns each prompt's tokens
    followed by its generated tokens, cut before its first ``eos_id``."""
    if not prompts:
        raise UserError("no prompts were given")
    device = model_device(model)
    for prompt in prompts:
        if len(prompt) == 0:
            raise UserError('a prompt is empty; pass some text, e.g. prompt="Every effort moves you"')
    width = max(len(p) for p in prompts)
    idx = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long, device=device)
    start = torch.tensor([width - len(p) for p in prompts], dtype=torch.long, device=device)
    steps = list(stream(model, idx, max_new_tokens, context_size, decoding, generator, start=start))
    new = torch.cat(steps, dim=1).tolist() if steps else [[] for _ in prompts]
    eos_id = (decoding or DecodingConfig()).eos_id
    out = []
    for prompt, tokens in zip(prompts, new):
        if eos_id is not None and eos_id in tokens:
            tokens = tokens[: tokens.index(eos_id)]
        out.append(list(prompt) + tokens)
    return out


def generate_text_simple(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int):
    """The book's greedy decoding (chapter 4)."""
    return generate(model, idx, max_new_tokens, context_size)
