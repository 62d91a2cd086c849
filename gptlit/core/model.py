"""The GPT-2 architecture of chapter 4 of the book, in one file.

Parameter names and shapes follow the book's ``GPTModel`` so that a ``model.pth`` saved by the book's code
loads here unchanged. Nothing in this file knows about Lightning or Hydra.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gptlit.errors import UserError, check_int
from gptlit.core.kv_cache import KVCache, LayerCache

KERNELS = ("fused", "book")


@dataclass
class GPTConfig:
    """The book's config mapping as a checked object; the keys are the book's."""

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False
    # "fused" runs PyTorch's fused kernels (SDPA, layer_norm, gelu). "book" runs the book's written-out formulas in
    # its order of operations: the explicit masked softmax, whose dropout draws random numbers as the book's does,
    # and LayerNorm and GELU computed term by term. The fused kernels round differently (about 1e-7 per step),
    # which a long run grows into the printed third decimal. Book-only: part of the exact reproduction that cannot
    # move into gptlit/book/.
    kernels: str = "fused"
    # The ids the tokenizer produces, where vocab_size rounds them up for speed (None: all of vocab_size); the
    # ids above are padding, trained towards zero probability and never sampled.
    vocab_used: int | None = None
    # The tokenizer the model's ids belong to (gptlit.core.tokenizer: "gpt2", or a trained one's fingerprint):
    # weights are never read with another tokenizer.
    tokenizer: str = "gpt2"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            check_int(f"model.{name}", getattr(self, name))
        if self.emb_dim % self.n_heads:
            raise UserError(
                f"model.emb_dim ({self.emb_dim}) must be divisible by model.n_heads ({self.n_heads}); "
                f"pick n_heads among {[h for h in range(1, self.emb_dim + 1) if self.emb_dim % h == 0][:12]}"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise UserError(f"model.drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if self.vocab_used is not None and not 0 < self.vocab_used <= self.vocab_size:
            raise UserError(f"model.vocab_used ({self.vocab_used}) must be between 1 and model.vocab_size "
                            f"({self.vocab_size})")
        if self.kernels not in KERNELS:
            raise UserError(f"model.kernels must be one of {KERNELS}, got {self.kernels!r}")

    @classmethod
    def from_any(cls, cfg: GPTConfig | Mapping[str, Any]) -> GPTConfig:
        """Accept the book's dict (or any mapping with its keys); keys the model does not use are ignored."""
        return config_from(cls, cfg)

    @property
    def book_kernels(self) -> bool:
        return self.kernels == "book"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Heads a KV cache stores per layer: every head's (no grouped-query attention in GPT-2)."""
        return self.n_heads

    @property
    def family(self) -> str:
        return "gpt2"


def config_from(cls: type, cfg: Any) -> Any:
    """``cfg`` as a config of dataclass ``cls``: a ``cls`` as it is, a mapping without the keys ``cls`` has not."""
    if isinstance(cfg, cls):
        return cfg
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in dict(cfg).items() if k in known})


class Dropout(nn.Module):
    """Dropout, with a mask that is five times cheaper to draw on a CPU.

    torch's CPU dropout draws one Bernoulli number per element from its serial Mersenne Twister (MKL's vectorised
    generator serves Intel CPUs only): 22 ms for one block's 1.6M attention weights on an AMD EPYC, where the
    softmax takes 1.2 ms. Here each 64-bit draw gives four 16-bit uniforms, each compared with p in steps of
    1/65536 (the rate used is p rounded to that step, and the scale is exact for it), and backward keeps a
    one-byte mask instead of a four-byte one. Elsewhere (CUDA's Philox kernels) and with the book's kernels, whose
    random draws must be the book's, it is torch's own.
    """

    def __init__(self, p: float, book: bool = False):
        super().__init__()
        self.p = p
        self.book = book
        self.dropped = round(p * 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        # Under torch.compile (trainer.compile=true) the compiler draws the mask in a vectorised kernel of its own;
        # random_ over the whole int64 range cannot be traced, and would split the graph at every dropout.
        if self.book or x.device.type != "cpu" or self.dropped == 0 or torch.compiler.is_compiling():
            return F.dropout(x, self.p, True)
        n = x.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = draws.view(torch.int16)[:n].view(x.shape) >= self.dropped - 32768
        return (x * keep).mul_(65536 / (65536 - self.dropped))


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.drop_rate = cfg.drop_rate
        self.book = cfg.book_kernels
        # Created in the book's order (query, key, value, projection) so one seed gives the book's weights.
        self.W_query = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)
        self.dropout = Dropout(cfg.drop_rate, cfg.book_kernels)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The book keeps its causal mask as a persistent buffer; it is derivable, so we drop it on load.
        state_dict.pop(prefix + "mask", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        b, t, d = x.shape
        # The book's order: the gradient reaching x sums the three projections' in reverse order of use.
        k = self._heads(self.W_key(x))
        q = self._heads(self.W_query(x))
        v = self._heads(self.W_value(x))
        if cache is not None:
            # Decoding only (no dropout): the new queries attend to every cached token of their row.
            k, v = cache.update(k, v)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.mask, is_causal=cache.is_causal)
        elif self.book or (self.training and self.drop_rate > 0 and x.device.type == "cpu"):
            # SDPA's CPU kernels have no dropout and fall back to this same computation with torch's dropout.
            scores = (q @ k.transpose(2, 3)).masked_fill(
                torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1), float("-inf")
            )
            weights = self.dropout(torch.softmax(scores / math.sqrt(self.head_dim), dim=-1))
            context = weights @ v
        else:
            context = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.drop_rate if self.training else 0.0, is_causal=True
            )
        return self.out_proj(context.transpose(1, 2).reshape(b, t, d))


class LayerNorm(nn.Module):
    """LayerNorm with the book's parameter names (scale, shift) and eps."""

    def __init__(self, emb_dim: int, book: bool = False, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.book = book
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.book:
            mean = x.mean(dim=-1, keepdim=True)
            var = x.var(dim=-1, keepdim=True, unbiased=False)
            return self.scale * ((x - mean) / torch.sqrt(var + self.eps)) + self.shift
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


# sqrt(2/pi) as the book computes it: a float32 square root of a float32, one ulp from the double's rounding.
BOOK_GELU_SCALE = torch.sqrt(torch.tensor(2.0 / math.pi)).item()


class GELU(nn.Module):
    """GPT-2's tanh approximation of GELU."""

    def __init__(self, book: bool = False):
        super().__init__()
        self.book = book

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.book:
            return 0.5 * x * (1 + torch.tanh(BOOK_GELU_SCALE * (x + 0.044715 * torch.pow(x, 3))))
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        # A Sequential so the parameter names are the book's (layers.0, layers.2).
        self.layers = nn.Sequential(
            nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim), GELU(cfg.book_kernels), nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.att = MultiHeadAttention(cfg)
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg.emb_dim, cfg.book_kernels)
        self.norm2 = LayerNorm(cfg.emb_dim, cfg.book_kernels)
        self.drop_resid = Dropout(cfg.drop_rate, cfg.book_kernels)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.drop_resid(self.att(self.norm1(x), cache))
        return x + self.drop_resid(self.ff(self.norm2(x)))


def same_tensor(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether two tensors are one storage (a tied head and embedding), in a model or in a state dict of it."""
    return a is not None and b is not None and a.shape == b.shape and a.data_ptr() == b.data_ptr()


class GPTModel(nn.Module):
    def __init__(self, cfg: GPTConfig | Mapping[str, Any]):
        super().__init__()
        cfg = GPTConfig.from_any(cfg)
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = Dropout(cfg.drop_rate, cfg.book_kernels)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = LayerNorm(cfg.emb_dim, cfg.book_kernels)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)

    @property
    def tied_head(self) -> bool:
        """The output head is the token embedding (GPT-2's weights, and models trained from them)."""
        return same_tensor(self.out_head.weight, self.tok_emb.weight)

    def forward(self, in_idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits [batch, n, vocab]; with a ``cache``, ``in_idx`` continues the cached tokens and only the
        logits of its last position come back ([batch, 1, vocab]), which is all decoding needs."""
        return self.out_head(self.features(in_idx, cache))

    def features(self, in_idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """What the output head reads: the final norm's output, [batch, n, emb_dim] (with a ``cache``, of the
        last position only). A server computes the head's product itself, in the layout its CPU runs fastest."""
        if cache is not None:
            return self._features_cached(in_idx, cache)
        seq_len = in_idx.shape[1]
        if seq_len > self.cfg.context_length:
            raise UserError(
                f"input has {seq_len} tokens but the model's context_length is {self.cfg.context_length}; "
                "crop the input to the last context_length tokens"
            )
        pos = torch.arange(seq_len, device=in_idx.device)
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(pos))
        return self.final_norm(self.trf_blocks(x))

    def _features_cached(self, in_idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        positions = cache.begin(in_idx.shape[1])
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(positions))
        for block, layer_cache in zip(self.trf_blocks, cache.layers):
            x = block(x, layer_cache)
        cache.advance(in_idx.shape[1])
        return self.final_norm(x[:, -1:])
