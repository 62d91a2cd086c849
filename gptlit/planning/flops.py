"""Training cost of a model (GPT-2, Llama 3, Qwen3) in FLOPs and the matmul rate of a device, for tokens/s and MFU figures.

FLOPs per token follow the PaLM paper's accounting (appendix B): 6 N for the forward and backward pass, N every
parameter but the token and position embeddings (lookups, not matmuls; the output head counts, it is not tied),
plus 12 * n_layers * context_length * emb_dim for the
attention scores and their weighted sum, counted over the full square although the mask makes half of it dead.
"""

from __future__ import annotations

import time

import torch

from gptlit.core.device import synchronize
from gptlit.core.families import ModelConfig


def matmul_parameters(cfg: ModelConfig) -> int:
    """Parameters of a model without its embedding tables: the N of 6 N. A tied head is counted here, once."""
    d, v, layers = cfg.emb_dim, cfg.vocab_size, cfg.n_layers
    if cfg.family == "gpt2":
        attention = 4 * d * d + (3 * d if cfg.qkv_bias else 0) + d
        feed_forward = 8 * d * d + 5 * d
        norms = 4 * d
        return layers * (attention + feed_forward + norms) + 2 * d + d * v
    # Llama 3 / Qwen3: grouped-query attention (key and value projections n_kv_groups heads wide), a SwiGLU's
    # three matrices, two RMSNorm scales per block (and Qwen3's two head-sized ones), no biases.
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_groups * cfg.head_dim
    attention = 2 * d * q + 2 * d * kv + (2 * cfg.head_dim if cfg.qk_norm else 0)
    return layers * (attention + 3 * d * cfg.hidden_dim + 2 * d) + d + d * v


def training_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    seq_len = cfg.context_length if seq_len is None else seq_len
    # The scores and the weighted sum run over every query head: n_heads * head_dim wide (emb_dim in GPT-2).
    return 6.0 * matmul_parameters(cfg) + 12.0 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim


def step_matmul_shapes(cfg: ModelConfig, tokens: int) -> list[tuple[int, int, int, int]]:
    """The (m, k, n, count) matmuls of one forward pass over ``tokens`` tokens: per layer the attention
    projections (query, key, value, output) and the feed-forward's, then the output head once."""
    d, layers = cfg.emb_dim, cfg.n_layers
    if cfg.family == "gpt2":
        return [(tokens, d, d, 4 * layers), (tokens, d, 4 * d, layers), (tokens, 4 * d, d, layers),
                (tokens, d, cfg.vocab_size, 1)]
    q, kv, hidden = cfg.n_heads * cfg.head_dim, cfg.n_kv_groups * cfg.head_dim, cfg.hidden_dim
    return [(tokens, d, q, layers), (tokens, d, kv, 2 * layers), (tokens, q, d, layers), (tokens, d, hidden, 2 * layers),
            (tokens, hidden, d, layers), (tokens, d, cfg.vocab_size, 1)]


@torch.no_grad()
def measure_matmul_flops(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int = 2048,
    repeats: int = 5,
    shapes: list[tuple[int, int, int, int]] | None = None,
) -> float:
    """The matmul rate (FLOP/s) of ``shapes`` ((m, k, n, count) each; by default one ``size``-cube), each timed
    as the best of ``repeats`` runs and weighted by its count: the ceiling a training step is measured against."""
    device = torch.device(device)
    shapes = shapes or [(size, size, size, 1)]
    # A generator of its own: drawing from the global one would shift training's dropout and shuffles.
    generator = torch.Generator(device=device).manual_seed(0)
    flops = seconds = 0.0
    for m, k, n, count in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype, generator=generator)
        b = torch.randn(k, n, device=device, dtype=dtype, generator=generator)
        a @ b  # the first call pays for kernel selection and memory
        synchronize(device)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        flops += 2.0 * m * k * n * count
        seconds += best * count
    return flops / seconds


def step_peak_flops(cfg: ModelConfig, tokens: int, device: torch.device | str, dtype: torch.dtype) -> float:
    """The denominator of MFU, one definition for the progress bar and plan.py: the rate the device runs this
    step's own matmuls at (those of a forward pass over ``tokens`` tokens: one micro-batch) in ``dtype``."""
    return measure_matmul_flops(device, dtype, repeats=3, shapes=step_matmul_shapes(cfg, tokens))
