"""Training cost of a GPTModel in FLOPs and the matmul rate of a device, for tokens/s and MFU figures.

FLOPs per token follow the PaLM paper's accounting (appendix B): 6 N for the forward and backward pass, N every
parameter but the token and position embeddings (lookups, not matmuls; the output head counts, it is not tied),
plus 12 * n_layers * context_length * emb_dim for the
attention scores and their weighted sum, counted over the full square although the mask makes half of it dead.
"""

from __future__ import annotations

import time

import torch

from gptlit.core.model import GPTConfig


def matmul_parameters(cfg: GPTConfig) -> int:
    """Parameters of a GPTModel without its embeddings: the N of 6 N."""
    d, v, layers = cfg.emb_dim, cfg.vocab_size, cfg.n_layers
    attention = 4 * d * d + (3 * d if cfg.qkv_bias else 0) + d
    feed_forward = 8 * d * d + 5 * d
    norms = 4 * d
    return layers * (attention + feed_forward + norms) + 2 * d + d * v


def training_flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> float:
    seq_len = cfg.context_length if seq_len is None else seq_len
    return 6.0 * matmul_parameters(cfg) + 12.0 * cfg.n_layers * seq_len * cfg.emb_dim


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def measure_matmul_flops(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5
) -> float:
    """The best rate (FLOP/s) of ``repeats`` square matmuls: the ceiling a training step is measured against."""
    device = torch.device(device)
    # A generator of its own: drawing from the global one would shift training's dropout and shuffles.
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    a @ b
    _synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best
