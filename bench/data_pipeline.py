"""The textfiles pipeline on generated corpora of growing size: throughput, and memory that does not grow.

    python bench/data_pipeline.py [--sizes-mb 50 300] [--workers 2] [--root /tmp/gptlit-bench] [--smoke]

For each size it writes a corpus of ~2 MB .txt files (words of The Verdict drawn at random, so the BPE work is
that of English prose) under --root, then measures in a fresh process each: tokenizing into the token cache
(MB/s, tokens/s, peak RSS of the main process and of the busiest worker), finding the cache again on a second
run (hashing only), and reading every window of the train split through a DataLoader (peak anonymous memory,
sampled, since the memory-mapped pages the windows touch are page cache that the kernel reclaims at will).
``--smoke`` runs one 2 MB corpus with one worker in a temporary folder, to check that the script runs
(tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# This checkout's gptlit, not whichever one is installed.
sys.path.insert(0, str(ROOT))
FILE_MB = 2


def generate(folder: Path, size_mb: int, words: list[str]) -> None:
    if folder.is_dir() and len(list(folder.glob("*.txt"))) == size_mb // FILE_MB:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size_mb)
    vocab = np.array(words, dtype=object)
    for i in range(size_mb // FILE_MB):
        picks = vocab[rng.integers(0, len(vocab), size=FILE_MB * 1_000_000 // 6)]
        lines = [" ".join(picks[j : j + 12]) for j in range(0, len(picks), 12)]
        (folder / f"book{i:04d}.txt").write_text("\n".join(lines), encoding="utf-8")


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(folder: Path, cache_dir: Path, workers: int) -> dict:
    """One corpus, in this (fresh) process."""
    import torch
    from torch.utils.data import DataLoader

    from gptlit.data.text import TokenWindows
    from gptlit.data.token_cache import TokenFile, build_token_cache, find_text_files

    files = find_text_files(folder)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    corpus_mb = sum(f.stat().st_size for f in files) / 1e6
    start = time.perf_counter()
    path = build_token_cache(files, cache_dir, workers=workers, progress=False)
    tokenize_s = time.perf_counter() - start
    main_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    start = time.perf_counter()
    assert build_token_cache(files, cache_dir, workers=workers, progress=False) == path
    cached_s = time.perf_counter() - start

    tokens = TokenFile(path)
    windows = TokenWindows(TokenFile(path, 0, int(0.9 * len(tokens))), 1024, 1024)
    anon_before, anon_peak, checksum = rss_anon_mb(), 0.0, 0
    start = time.perf_counter()
    for i, (x, _) in enumerate(DataLoader(windows, batch_size=32)):
        checksum += int(x[:, 0].sum())
        if i % 64 == 0:
            anon_peak = max(anon_peak, rss_anon_mb())
    iterate_s = time.perf_counter() - start
    return {
        "corpus_mb": corpus_mb,
        "files": len(files),
        "tokens": len(tokens),
        "tokenize_s": tokenize_s,
        "mb_per_s": corpus_mb / tokenize_s,
        "tokens_per_s": len(tokens) / tokenize_s,
        "baseline_rss_mb": baseline,
        "main_peak_rss_mb": main_peak,
        "worker_peak_rss_mb": worker_peak,
        "cached_s": cached_s,
        "windows": len(windows),
        "iterate_s": iterate_s,
        "iterate_anon_before_mb": anon_before,
        "iterate_anon_peak_mb": max(anon_peak, rss_anon_mb()),
        "token_file_mb": path.stat().st_size / 1e6,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[50, 300])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path("/tmp/gptlit-bench"))
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "the-verdict.txt", help="where the words come from")
    parser.add_argument("--smoke", action="store_true", help="one 2 MB corpus, one worker: does the script run?")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.root / "cache", args.workers)))
        return
    if args.smoke:
        with tempfile.TemporaryDirectory() as root:
            run(args.data, [FILE_MB], 1, Path(root))
    else:
        run(args.data, args.sizes_mb, args.workers, args.root)


def run(data: Path, sizes_mb: list[int], workers: int, root: Path) -> None:
    words = data.read_text(encoding="utf-8").split()
    rows = []
    for size in sizes_mb:
        folder = root / f"corpus-{size}mb"
        generate(folder, size, words)
        # A cold cache each time, so every size pays for its tokenization.
        for old in (root / "cache").glob("*.tokens"):
            old.unlink()
        out = subprocess.run(
            [sys.executable, __file__, "--measure", str(folder), "--root", str(root), "--workers", str(workers)],
            check=True, capture_output=True, text=True, cwd=ROOT,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{workers} tokenizer worker processes; windows of 1024 tokens, batches of 32\n")
    print("| corpus | files | tokens | tokenize | MB/s | tokens/s | RSS after imports -> peak, main / worker "
          "| cache found again "
          "| read all windows | anon. memory while reading |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['corpus_mb']:.0f} MB | {r['files']} | {r['tokens'] / 1e6:.1f} M | {r['tokenize_s']:.1f} s "
            f"| {r['mb_per_s']:.1f} | {r['tokens_per_s'] / 1e6:.2f} M "
            f"| {r['baseline_rss_mb']:.0f} -> {r['main_peak_rss_mb']:.0f} / "
            f"{r['worker_peak_rss_mb']:.0f} MB | {r['cached_s']:.2f} s | {r['windows']} in {r['iterate_s']:.1f} s "
            f"| {r['iterate_anon_before_mb']:.0f} -> {r['iterate_anon_peak_mb']:.0f} MB |"
        )


if __name__ == "__main__":
    main()
