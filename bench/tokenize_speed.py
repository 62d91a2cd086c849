"""Tokenizing speed: a BPE trained on the corpus (with Hugging Face tokenizers) against GPT-2's BPE, both run by tiktoken.

    python bench/tokenize_speed.py [--data ../shared/data/kjv.txt] [--vocab-size 8192] [--rounds 3]
    python bench/tokenize_speed.py --smoke          (The Verdict, a 512-token BPE, one round: checks that it runs)

Trains a byte-level BPE on the corpus (python tokenizer.py's training), then encodes the whole corpus, cut in
pieces of about 64 kB as gptlit's token caches encode it, with each tokenizer, taking turns for ``--rounds``
rounds: one piece at a time (encode), and in batches of 256 pieces (encode_batch: tiktoken's thread pool,
tokenizers' Rust threads), which is what gptlit.data.token_cache.encode_documents calls. Reports MB/s of UTF-8
text (the best round), tokens, bytes per token, the ratio of the trained tokenizer's rate to GPT-2's, and the
machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This checkout's gptlit, not whichever one is installed.
sys.path.insert(0, str(ROOT))
BATCH = 256


def machine() -> str:
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        have = set(next(line for line in info.splitlines() if line.startswith("flags")).split())
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name} ({flags}), {os.cpu_count()} cores"


def best_rate(encode, pieces: list[str], n_bytes: int, rounds: int) -> tuple[float, int]:
    best, tokens = float("inf"), 0
    for _ in range(rounds):
        start = time.perf_counter()
        tokens = encode(pieces)
        best = min(best, time.perf_counter() - start)
    return n_bytes / best / 1e6, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kjv.txt"))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.vocab_size, args.rounds = 512, 1

    from gptlit.core.tokenizer import load_tokenizer
    from gptlit.data.text import text_pieces
    from gptlit.data.tokenizer_training import train_bpe

    path = Path(args.data)
    pieces = list(text_pieces([path], 0, float("inf")))
    n_bytes = sum(len(p.encode("utf-8")) for p in pieces)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        trained_path = train_bpe(iter(pieces), args.vocab_size, [], Path(folder) / "tokenizer.json", progress=False)
        trained_in = time.perf_counter() - started
        tokenizers = {"GPT-2 BPE (tiktoken)": load_tokenizer(), f"trained BPE {args.vocab_size} (tokenizers-trained, tiktoken-run)": load_tokenizer(trained_path)}
        print(f"machine: {machine()}")
        print(f"corpus: {path.name}, {n_bytes / 1e6:.2f} MB in {len(pieces)} pieces; trained the BPE in {trained_in:.1f} s")
        print(f"{args.rounds} rounds each, best round; batches of {BATCH} pieces")
        print()
        print("| tokenizer | tokens | bytes/token | one piece at a time MB/s | batched MB/s |")
        print("| --- | --- | --- | --- | --- |")
        batched = {}
        for name, tokenizer in tokenizers.items():
            def one(ps, t=tokenizer):
                return sum(len(t.encode(p)) for p in ps)

            def batch(ps, t=tokenizer):
                return sum(len(ids) for i in range(0, len(ps), BATCH) for ids in t.encode_batch(ps[i : i + BATCH]))

            single, tokens = best_rate(one, pieces, n_bytes, args.rounds)
            batched[name], _ = best_rate(batch, pieces, n_bytes, args.rounds)
            print(f"| {name} | {tokens:,} | {n_bytes / tokens:.3f} | {single:.2f} | {batched[name]:.2f} |")
        gpt2, trained = batched.values()
        print()
        print(f"trained / GPT-2, batched: {trained / gpt2:.2f}x")


if __name__ == "__main__":
    main()
