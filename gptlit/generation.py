"""Decoding: the book's greedy, temperature and top-k sampling (section 5.3), plus top-p."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from gptlit.errors import UserError


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
        if self.top_k is not None and self.top_k <= 0:
            raise UserError(f"decoding.top_k must be a positive integer or null, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UserError(f"decoding.top_p must be in (0, 1] or null, got {self.top_p}")

    def to_dict(self) -> dict:
        return asdict(self)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set every logit outside the top-k, then outside the nucleus of mass top_p, to -inf."""
    if top_k is not None:
        top_k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first token always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of [batch, vocab] logits; returns [batch, 1]."""
    logits = filter_logits(logits, top_k, top_p)
    if temperature > 0.0:
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)
    return torch.argmax(logits, dim=-1, keepdim=True)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Append up to ``max_new_tokens`` tokens to ``idx`` ([batch, n]) with the book's semantics.

    The context is cropped to its last ``context_size`` tokens; generation stops once every row has produced
    ``eos_id`` (which is not appended, as in the book). ``generator`` lets a caller sample without touching
    the global random state.
    """
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])[:, -1, :]
        idx_next = next_token(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            # A row that already ended keeps receiving eos_id as padding until every row has ended.
            idx_next = idx_next.masked_fill(finished.unsqueeze(1), eos_id)
            finished |= idx_next.squeeze(1) == eos_id
            if finished.all():
                break
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def generate_text_simple(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int):
    """The book's greedy decoding (chapter 4)."""
    return generate(model, idx, max_new_tokens, context_size)
