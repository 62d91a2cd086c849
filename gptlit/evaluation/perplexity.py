"""Sliding-window perplexity of a model on a token sequence.

Windows of ``window`` input tokens start every ``stride`` tokens. Each window scores only the targets that the
windows before it did not, so every token after the first is scored exactly once, with at least
``window - stride`` tokens of context once the first window is past (the usual sliding-window perplexity,
e.g. Hugging Face transformers' "Perplexity of fixed-length models"). The last window may be shorter. With
``stride == window`` the windows do not overlap, as the training windows do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gptlit.core.device import model_device
from gptlit.errors import UserError, check_int
from gptlit.evaluation.autocast import at_precision
from gptlit.evaluation.batches import batches

IGNORE = -100  # targets that a window does not score


@dataclass(frozen=True)
class Window:
    start: int  # position of its first input token
    length: int  # input tokens, each with the next token as its target
    scored: int  # how many of its last targets count


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    check_int("the window length (data.context_length)", window)
    check_int("data.stride", stride, what="a positive integer or null (= the window length)")
    if stride > window:
        raise UserError(f"data.stride ({stride}) exceeds the window length ({window}), which would skip tokens; use at most {window}")
    n_targets = n_tokens - 1
    if n_targets < 1:
        raise UserError(f"the text has {n_tokens} token(s); perplexity needs at least 2")
    windows, scored_until, start = [], 0, 0
    while True:
        end = min(start + window, n_targets)
        windows.append(Window(start, end - start, end - scored_until))
        if end == n_targets:
            return windows
        scored_until, start = end, start + stride


@dataclass
class PerplexityResult:
    loss: float  # mean negative log-likelihood per scored token, in nats
    perplexity: float
    tokens: int  # tokens scored
    windows: int
    bpb: float | None = None  # bits per UTF-8 byte of the text scored (None: not asked for)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokens: Sequence[int],
    window: int,
    stride: int | None = None,
    batch_size: int = 8,
    precision: str | None = "32-true",
    progress: bool = True,
    byte_lengths: torch.Tensor | None = None,
) -> PerplexityResult:
    """Token-weighted mean loss and perplexity of ``model`` on ``tokens`` (see the module's docstring), and with
    ``byte_lengths`` (the tokenizer's: gptlit.core.tokenizer.Tokenizer.byte_lengths) the bits per byte: the summed
    cross-entropy in bits of the scored tokens that stand for text, over their UTF-8 bytes."""
    stride = window if stride is None else stride
    check_int("data.batch_size", batch_size)
    windows = sliding_windows(len(tokens), window, stride)
    device = model_device(model)
    model.eval()
    # Every token's nats, float32 on the device (Apple GPUs have no float64), read once at the end and added up
    # exactly in Python (math.fsum): a float32 sum on the device would change the printed perplexity's last
    # digits with the order a CPU's vector width gives it; the correctly rounded sum is the same everywhere.
    batch_nats: list[torch.Tensor] = []
    batch_text_nats: list[torch.Tensor] = []
    text_bytes = 0
    sizes = None if byte_lengths is None else byte_lengths.to(device)
    with at_precision(model, precision), tqdm(total=len(windows), desc="perplexity", unit="window", disable=not progress) as bar:
        for batch in batches(windows, batch_size):
            width = max(w.length for w in batch)
            inputs = torch.zeros(len(batch), width, dtype=torch.long)
            targets = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            for row, w in enumerate(batch):
                chunk = torch.from_numpy(np.asarray(tokens[w.start : w.start + w.length + 1], dtype=np.int64))
                inputs[row, : w.length] = chunk[:-1]
                targets[row, w.length - w.scored : w.length] = chunk[1:][w.length - w.scored :]
            logits = model(inputs.to(device))
            flat_targets = targets.to(device).flatten()
            nats = F.cross_entropy(logits.float().flatten(0, 1), flat_targets, ignore_index=IGNORE, reduction="none")
            batch_nats.append(nats[flat_targets != IGNORE])
            if sizes is not None:
                kept = flat_targets != IGNORE
                token_bytes = sizes[flat_targets[kept]]
                batch_text_nats.append(nats[kept][token_bytes > 0])
                text_bytes += int(token_bytes.sum())
            bar.update(len(batch))
    scored = sum(w.scored for w in windows)
    mean = math.fsum(torch.cat(batch_nats).tolist()) / scored
    text_nats = math.fsum(torch.cat(batch_text_nats).tolist()) if batch_text_nats else 0.0
    bpb = text_nats / math.log(2) / text_bytes if text_bytes else None
    return PerplexityResult(mean, math.exp(min(mean, 700.0)), scored, len(windows), bpb)
