"""HellaSwag (Zellers et al., 2019), scored the way GPT-2 reproductions report it.

The rule is build-nanogpt's (``hellaswag.py`` in github.com/karpathy/build-nanogpt) and llm.c's
(``dev/data/hellaswag.py`` in github.com/karpathy/llm.c): each of an item's four endings is appended to its
context with a space (``ctx`` and ``" " + ending`` tokenized apart, then joined), and the model's
cross-entropy is taken over the ending's tokens only. ``acc`` counts the items whose lowest *summed* ending
loss is the right ending, ``acc_norm`` those whose lowest *mean* loss per ending token is. (This is
"completion style"; lm-evaluation-harness normalises by the ending's length in bytes instead, so its
acc_norm differs.) Build-nanogpt reports acc 0.2859 / acc_norm 0.2955 for OpenAI's GPT-2 124M on the
10,042 validation items.

The validation set is downloaded once from the dataset's own repository into a cache folder; a local file in
the same jsonl format (one item per line with ``ctx``, ``endings`` and ``label``) can be given instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gptlit.core.device import model_device
from gptlit.core.tokenizer import Tokenizer, encode
from gptlit.errors import UserError, check_int
from gptlit.evaluation.autocast import at_precision
from gptlit.evaluation.batches import batches
from gptlit.files import fetch

VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VAL_FILE = "hellaswag_val.jsonl"
VAL_ITEMS = 10042
N_ENDINGS = 4


def locate(path: str | Path | None, cache_dir: str | Path, url: str = VAL_URL) -> Path:
    """``path`` when given, else the cached validation set, downloaded into ``cache_dir`` the first time."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"task.path {path} is not a file; point it at a HellaSwag jsonl file")
        return path
    cached = Path(cache_dir) / VAL_FILE
    if not cached.is_file():
        fetch(url, cached, fix=f"connect to the internet once, or pass task.path=FILE: a HellaSwag jsonl such as {VAL_FILE}")
    return cached


def read_items(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The items of a HellaSwag jsonl file (the first ``limit`` of them), each checked for ctx, endings, label."""
    if limit is not None:
        check_int("task.limit", limit, what="a positive integer or null (= every item)")
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if limit is not None and len(items) == limit:
                break
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                ok = (isinstance(item["ctx"], str) and len(item["endings"]) == N_ENDINGS
                      and all(isinstance(e, str) for e in item["endings"]) and item["label"] in range(N_ENDINGS))
            except (json.JSONDecodeError, KeyError, TypeError):
                ok = False
            if not ok:
                raise UserError(
                    f"{path} line {number} is not a HellaSwag item (a JSON object with ctx, 4 endings and a label 0-3)"
                )
            items.append(item)
    if not items:
        raise UserError(f"{path} holds no HellaSwag items")
    return items


def render(item: dict[str, Any], context_length: int, tokenizer: Tokenizer | None = None) -> list[tuple[list[int], int]]:
    """Per ending: the tokens of context and ending, and how many of the last ones are the ending's. A row longer
    than the model's context plus one loses its first tokens: the ending keeps all the context there is room for."""
    context = encode(item["ctx"], tokenizer)
    rows = []
    for ending in item["endings"]:
        ending_tokens = encode(" " + ending, tokenizer)
        row = (context + ending_tokens)[-(context_length + 1):]
        rows.append((row, min(len(ending_tokens), len(row) - 1)))
    return rows


@dataclass
class ItemScores:
    sum_loss: torch.Tensor  # [items, 4]: the summed cross-entropy of each ending
    mean_loss: torch.Tensor  # [items, 4]: the same per ending token
    labels: torch.Tensor  # [items]


@torch.no_grad()
def score_items(
    model: nn.Module, items: list[dict[str, Any]], batch_size: int = 4, precision: str | None = "32-true", progress: bool = True,
    tokenizer: Tokenizer | None = None,
) -> ItemScores:
    """The ending losses of every item, ``batch_size`` items (4 rows each) per forward pass."""
    check_int("task.batch_size", batch_size)
    device = model_device(model)
    context_length = model.cfg.context_length
    model.eval()
    sums, counts = [], []
    with at_precision(model, precision), tqdm(total=len(items), desc="hellaswag", unit="item", disable=not progress) as bar:
        for batch in batches(items, batch_size):
            rows = [row for item in batch for row in render(item, context_length, tokenizer)]
            width = max(len(tokens) for tokens, _ in rows) - 1
            inputs = torch.zeros(len(rows), width, dtype=torch.long)
            targets = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.bool)
            for r, (tokens, n_ending) in enumerate(rows):
                row = torch.tensor(tokens)
                n = len(tokens) - 1
                inputs[r, :n], targets[r, :n] = row[:-1], row[1:]
                mask[r, n - n_ending : n] = True
            logits = model(inputs.to(device)).float()
            losses = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), reduction="none")
            losses = losses.view(len(rows), width).cpu() * mask
            sums.append(losses.sum(dim=1).view(-1, N_ENDINGS))
            counts.append(mask.sum(dim=1).view(-1, N_ENDINGS))
            bar.update(len(batch))
    sum_loss, count = torch.cat(sums), torch.cat(counts)
    return ItemScores(sum_loss, sum_loss / count, torch.tensor([item["label"] for item in items]))


def accuracy(scores: ItemScores) -> dict[str, float | int]:
    """``acc`` by the lowest summed ending loss, ``acc_norm`` by the lowest mean one, over ``items`` items."""
    acc = (scores.sum_loss.argmin(dim=1) == scores.labels).double().mean().item()
    acc_norm = (scores.mean_loss.argmin(dim=1) == scores.labels).double().mean().item()
    return {"acc": acc, "acc_norm": acc_norm, "items": len(scores.labels)}


def hellaswag(
    model: nn.Module, items: list[dict[str, Any]], batch_size: int = 4, precision: str | None = "32-true", progress: bool = True,
    tokenizer: Tokenizer | None = None,
) -> dict[str, float | int]:
    return accuracy(score_items(model, items, batch_size, precision, progress, tokenizer))
