"""Llama 3 and Qwen3: the decoder block that followed GPT-2, in one configurable file.

Both families share one block, and differ in settings only:

- rotary position embeddings (RoPE) instead of a learned position table, applied to queries and keys; Llama 3.1
  and 3.2 stretch RoPE's low frequencies for long contexts (``rope_scaling``);
- RMSNorm instead of LayerNorm, before each sub-block and at the end;
- a SwiGLU feed-forward (``silu(fc1(x)) * fc2(x)``, then ``fc3``) instead of GELU;
- grouped-query attention: ``n_kv_groups`` key/value heads shared by ``n_heads`` query heads, which shrinks the
  KV cache by ``n_heads / n_kv_groups``;
- Qwen3 adds an RMSNorm over each head's queries and keys (``qk_norm``) and sets the head size apart from
  ``emb_dim / n_heads`` (``head_dim``);
- no biases anywhere, and the output head tied to the token embedding where the family ties it.

Parameter names follow the book's ``llms_from_scratch.llama3`` and ``qwen3`` models (``tok_emb``,
``trf_blocks.N.att.W_query``, ``ff.fc1``, ``norm1``, ...), and the model speaks GPTModel's interface
(``forward(idx, cache)``, ``features``, ``out_head``, ``cfg.kv_heads``), so generation, training, serving and
the planner take either. Nothing in this file knows about Lightning or Hydra.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gptlit.errors import UserError, check_int
from gptlit.core.kv_cache import KVCache, LayerCache
from gptlit.core.model import config_from

FAMILIES = ("llama3", "qwen3")
# Hugging Face's initializer_range for both families: weights start as N(0, 0.02). PyTorch's defaults (N(0, 1)
# embeddings) would make a tied head's first logits about sqrt(emb_dim) times too large.
INIT_STD = 0.02


@dataclass
class LlamaConfig:
    """One model of the Llama 3 or Qwen3 family; the defaults are Llama 3.2 1B's block."""

    family: str = "llama3"
    vocab_size: int = 128_256
    context_length: int = 8192
    emb_dim: int = 2048
    n_heads: int = 32
    n_kv_groups: int = 8
    n_layers: int = 16
    hidden_dim: int = 8192
    # Each attention head's size; None: emb_dim // n_heads (Llama). Qwen3 sets it (128 at every size).
    head_dim: int | None = None
    rope_base: float = 500_000.0
    # Llama 3.1+'s frequency scaling: {factor, low_freq_factor, high_freq_factor, original_context_length}.
    rope_scaling: dict[str, float] | None = None
    qk_norm: bool = False
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    drop_rate: float = 0.0
    # As in GPTConfig: the tokenizer's ids where vocab_size rounds them up, and the tokenizer they belong to.
    vocab_used: int | None = None
    tokenizer: str = "gpt2"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise UserError(f"model.family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_kv_groups", "n_layers", "hidden_dim"):
            check_int(f"model.{name}", getattr(self, name))
        if self.n_heads % self.n_kv_groups:
            raise UserError(f"model.n_heads ({self.n_heads}) must be a multiple of model.n_kv_groups "
                            f"({self.n_kv_groups}): each key/value head serves the same number of query heads")
        if self.head_dim is None:
            if self.emb_dim % self.n_heads:
                raise UserError(f"model.emb_dim ({self.emb_dim}) must be divisible by model.n_heads ({self.n_heads}), "
                                "or set model.head_dim")
            self.head_dim = self.emb_dim // self.n_heads
        check_int("model.head_dim", self.head_dim)
        if self.head_dim % 2:
            raise UserError(f"model.head_dim ({self.head_dim}) must be even: rotary embeddings turn pairs of numbers")
        if not 0.0 <= self.drop_rate < 1.0:
            raise UserError(f"model.drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if self.vocab_used is not None and not 0 < self.vocab_used <= self.vocab_size:
            raise UserError(f"model.vocab_used ({self.vocab_used}) must be between 1 and model.vocab_size "
                            f"({self.vocab_size})")
        if self.rope_scaling is not None:
            # Hydra hands a DictConfig; the config is stored in checkpoints as plain data.
            self.rope_scaling = {str(k): float(v) for k, v in dict(self.rope_scaling).items()}
            missing = {"factor", "low_freq_factor", "high_freq_factor", "original_context_length"} - set(self.rope_scaling)
            if missing:
                raise UserError(f"model.rope_scaling lacks {sorted(missing)}")

    @classmethod
    def from_any(cls, cfg: LlamaConfig | Mapping[str, Any]) -> LlamaConfig:
        return config_from(cls, cfg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def kv_heads(self) -> int:
        """Heads a KV cache stores per layer."""
        return self.n_kv_groups

    @property
    def book_kernels(self) -> bool:
        return False  # the book's exact kernels are GPT-2's only


def rope_frequencies(cfg: LlamaConfig) -> torch.Tensor:
    """RoPE's angular frequency of each pair of a head's dimensions [head_dim / 2], with Llama 3's scaling."""
    half = torch.arange(0, cfg.head_dim, 2, dtype=torch.float32, device="cpu") / cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_base ** half)
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    # Llama 3.1: wavelengths longer than the original context / low_freq_factor are slowed down by `factor`,
    # shorter than original / high_freq_factor kept, and those between blended linearly in context / wavelength.
    wavelength = 2 * math.pi / inv_freq
    original = scaling["original_context_length"]
    low, high, factor = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["factor"]
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
    middle = (wavelength <= original / low) & (wavelength >= original / high)
    return torch.where(middle, blended, scaled)


def rope_tables(cfg: LlamaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's angles [context_length, head_dim], each half repeated (the layout that
    rotates the first half of a head against the second, as Llama's and Qwen's Hugging Face weights expect)."""
    # On the CPU always, also when the model is built on the meta device to receive loaded weights: the tables
    # are not among the weights, so they must be real numbers (model.to(device) moves them).
    angles = torch.arange(cfg.context_length, dtype=torch.float32, device="cpu").unsqueeze(1) * rope_frequencies(cfg)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to x [batch, heads, tokens, head_dim] with cos/sin [batch or 1, 1, tokens, head_dim]."""
    first, second = x.chunk(2, dim=-1)
    turned = torch.cat([-second, first], dim=-1)
    return (x * cos + turned * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_groups, cfg.head_dim
        self.W_query = nn.Linear(cfg.emb_dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.W_key = nn.Linear(cfg.emb_dim, cfg.n_kv_groups * cfg.head_dim, bias=False)
        self.W_value = nn.Linear(cfg.emb_dim, cfg.n_kv_groups * cfg.head_dim, bias=False)
        self.out_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.emb_dim, bias=False)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.drop_rate = cfg.drop_rate

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: LayerCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.W_query(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.W_key(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.W_value(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        grouped = self.n_kv != self.n_heads  # SDPA shares each key/value head among its queries, uncopied
        if cache is not None:
            k, v = cache.update(k, v)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.mask, is_causal=cache.is_causal,
                                                     enable_gqa=grouped)
        else:
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=self.drop_rate if self.training else 0.0,
                                                     is_causal=True, enable_gqa=grouped)
        return self.out_proj(context.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """SwiGLU: a SiLU-gated product of two projections, then one back."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.fc2 = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.fc3 = nn.Linear(cfg.hidden_dim, cfg.emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.silu(self.fc1(x)) * self.fc2(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.att = Attention(cfg)
        self.ff = FeedForward(cfg)
        self.norm1 = nn.RMSNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.norm2 = nn.RMSNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), cos, sin, cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig | Mapping[str, Any]):
        super().__init__()
        cfg = LlamaConfig.from_any(cfg)
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.RMSNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight
        self.reset_rope()

    def reset_rope(self, device: torch.device | str | None = None) -> None:
        """Compute the rotary tables (on ``device``, else the default device). Not saved with the weights (they
        follow from the config, and a checkpoint stays the family's tensors), so a model built on the meta device
        to receive its weights without a second copy of them gets them here."""
        cos, sin = rope_tables(self.cfg)
        self.register_buffer("cos", cos.to(device), persistent=False)
        self.register_buffer("sin", sin.to(device), persistent=False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    @property
    def tied_head(self) -> bool:
        return self.out_head.weight is self.tok_emb.weight

    def forward(self, in_idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits [batch, n, vocab]; with a ``cache``, those of the last position only ([batch, 1, vocab])."""
        return self.out_head(self.features(in_idx, cache))

    def features(self, in_idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final norm's output, what the output head reads."""
        seq_len = in_idx.shape[1]
        if cache is not None:
            positions = cache.begin(seq_len)  # [batch, n]: each row counts from its own first real token
            cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        else:
            if seq_len > self.cfg.context_length:
                raise UserError(f"input has {seq_len} tokens but the model's context_length is "
                                f"{self.cfg.context_length}; crop the input to the last context_length tokens")
            cos, sin = self.cos[:seq_len], self.sin[:seq_len]
        x = self.drop_emb(self.tok_emb(in_idx))
        for i, block in enumerate(self.trf_blocks):
            x = block(x, cos, sin, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.advance(seq_len)
            x = x[:, -1:]
        return self.final_norm(x)
