"""The output head's product for a batch of decoding rows, in the layout this machine runs fastest.

On a CPU, GPT-2's head is the largest matrix of a decoding step (50,257 x 768, 154 MB in float32) and a step
of a few rows multiplies it by a thin matrix, where BLAS libraries differ widely: on one 2-core AMD EPYC
(AVX2, MKL) the 8-row product took 44 ms whole and 25 ms cut into blocks of 1,024 vocabulary rows, while the
1-row product gained nothing. Which block size wins depends on the CPU's caches and the BLAS, so the head
measures the candidates once, at the server's start, on the batch size it will run, and keeps the fastest.

One row (a lone request) always takes the model's own head, unchanged, so a request alone computes exactly
what generate.py computes. Only the tokenizer's ids are computed: padding ids of a vocabulary rounded up for
speed are never picked, so their logits are not needed.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

CANDIDATE_BLOCKS = (None, 512, 1024, 2048, 4096, 8192)  # None: the whole matrix in one product


class OutputHead:
    def __init__(self, weight: torch.Tensor, vocab: int, rows: int, block: int | None | str = "measure"):
        self.weight = weight
        self.vocab = vocab
        self.block = self.fastest_block(rows) if block == "measure" else block
        self._blocks = self.weight[:vocab].split(self.block) if self.block else (self.weight[:vocab],)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [rows, vocab] of features [rows, emb_dim]."""
        if features.shape[0] == 1:
            return F.linear(features, self.weight)[:, : self.vocab]
        return product(features, self._blocks)

    def fastest_block(self, rows: int) -> int | None:
        features = torch.randn(max(rows, 2), self.weight.shape[1], device=self.weight.device,
                               dtype=self.weight.dtype)
        timings = {}
        with torch.inference_mode():
            for block in CANDIDATE_BLOCKS:
                if block is not None and block >= self.vocab:
                    continue
                parts = self.weight[: self.vocab].split(block) if block else (self.weight[: self.vocab],)
                best = float("inf")
                for _ in range(3):  # the best of three: the first call also warms caches and allocators
                    began = time.perf_counter()
                    product(features, parts)
                    if features.device.type == "cuda":
                        torch.cuda.synchronize()
                    best = min(best, time.perf_counter() - began)
                timings[block] = best
        return min(timings, key=timings.get)


def product(features: torch.Tensor, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if len(blocks) == 1:
        return F.linear(features, blocks[0])
    return torch.cat([F.linear(features, block) for block in blocks], dim=-1)
