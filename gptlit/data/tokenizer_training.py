"""Training a byte-level BPE on a corpus with Hugging Face's ``tokenizers``, and measuring how well it compresses.

The tokenizer is GPT-2's kind: text is split by GPT-2's pattern, each piece is taken as bytes (so every text
encodes and nothing is unknown), and merges are learnt from the corpus. ``<|endoftext|>`` is its first special
token, the separator gptlit puts between documents. The corpus streams in as documents (a data module's
``documents("train")``), so it is never in memory at once; its validation part (``documents("val")``) is not
trained on and serves to compare compression with GPT-2's BPE.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable

from gptlit.core.tokenizer import ENDOFTEXT, Tokenizer
from gptlit.errors import UserError, check_int
from gptlit.files import atomic_write


def train_bpe(documents: Iterable[str], vocab_size: int, special_tokens: list[str], out: str | Path,
              progress: bool = True) -> Path:
    """Train a byte-level BPE of ``vocab_size`` tokens (special tokens and the 256 bytes included) on
    ``documents`` and write it to ``out`` (a tokenizer.json), whole or not at all."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    specials = [ENDOFTEXT, *(t for t in special_tokens if t != ENDOFTEXT)]
    check_int("vocab_size", vocab_size)
    if vocab_size < 256 + len(specials) + 1:
        raise UserError(f"vocab_size={vocab_size} leaves no room for merges: a byte-level BPE holds the 256 bytes and "
                        f"{len(specials)} special token(s) first; use at least {256 + len(specials) + 1}")
    if vocab_size > 65536:
        raise UserError(f"vocab_size={vocab_size}: token caches store ids in 16 bits; use at most 65536")
    tokenizer = HFTokenizer(models.BPE())
    # GPT-2's split pattern and byte mapping; no space is added before the text, as GPT-2 adds none.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    first = list(itertools.islice(iter(documents), 1))
    if not first or not first[0].strip():
        raise UserError("the corpus holds no text to train a tokenizer on; point data.path at text")
    tokenizer.train_from_iterator(itertools.chain(first, documents), trainer=trainer)
    out = Path(out)
    with atomic_write(out, "w") as f:
        f.write(tokenizer.to_str(pretty=True))
    return out


def bytes_per_token(tokenizer: Tokenizer, texts: list[str]) -> tuple[float, int]:
    """How many UTF-8 bytes of ``texts`` one token covers on average (more is better), and the token count."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    return (n_bytes / n_tokens if n_tokens else float("nan")), n_tokens
