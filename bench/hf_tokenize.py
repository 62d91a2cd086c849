"""data=hf on generated parquet corpora of growing size: tokenization throughput, and memory that stays flat.

    python bench/hf_tokenize.py [--sizes-mb 25 100] [--workers 1 2] [--root /tmp/gptlit-bench-hf]
    python bench/hf_tokenize.py --smoke          (one tiny corpus, one worker: checks that the script runs)

For each size it writes one parquet file of ~3 KB documents (words of The Verdict drawn at random, so the BPE
work is that of English prose) under --root, then tokenizes it with gptlit.data.hf.HFDataModule into a cold
token cache in a fresh process per run, while this process samples the resident memory of that process and of
every worker it starts (/proc, every 50 ms). It reports MB/s of UTF-8 text, MB/s per worker, tokens/s, and the
peak anonymous memory (RssAnon) of the main process and of the largest worker.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# This checkout's gptlit, not whichever one is installed.
sys.path.insert(0, str(ROOT))
DOC_BYTES = 3000


def generate(path: Path, size_mb: float, words: list[str]) -> None:
    if path.is_file():
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(size_mb * 1000))
    vocab = np.array(words, dtype=object)
    n_docs = int(size_mb * 1e6 / DOC_BYTES)
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
        for start in range(0, n_docs, 1000):
            docs = [" ".join(vocab[rng.integers(0, len(vocab), size=DOC_BYTES // 6)])
                    for _ in range(min(1000, n_docs - start))]
            writer.write_table(pa.table({"text": docs}))


def measure(path: Path, cache_dir: Path, workers: int) -> dict:
    """One run, in this (fresh) process."""
    import datasets  # noqa: F401  imported before the clock starts: a one-off cost, not a rate
    import pyarrow.parquet as pq

    from gptlit.data.hf import HFDataModule

    import pyarrow.compute as pc

    # A thousand rows at a time and without pre-buffering (which keeps what it read: gptlit.data.hf), so that
    # counting the text does not raise the peak being measured.
    text_mb = sum(pc.sum(pc.binary_length(batch.column(0))).as_py()
                  for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=1000, columns=["text"])
                  ) / 1e6
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dm = HFDataModule(path=str(path), cache_dir=str(cache_dir), tokenize_workers=workers, progress=False)
    start = time.perf_counter()
    paths = dm.build()
    seconds = time.perf_counter() - start
    tokens = paths["train"].stat().st_size // 2
    return {"text_mb": text_mb, "tokens": tokens, "seconds": seconds, "mb_per_s": text_mb / seconds,
            "tokens_per_s": tokens / seconds, "baseline_rss_mb": baseline}


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    # A breadth-first walk: the fork server is a child, the workers its children.
    found, frontier = [], [pid]
    while frontier:
        frontier = [c for p in frontier for c in children.get(p, [])]
        found += frontier
    return found


def rss_mb(pid: int) -> float:
    """Anonymous resident memory: the heap. The parquet file's mapped pages are page cache, which the kernel
    reclaims at will, and would grow with the part of the file read so far."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(path: Path, cache_dir: Path, workers: int) -> dict:
    shutil.rmtree(cache_dir, ignore_errors=True)  # a cold cache: every run pays for its tokenization
    proc = subprocess.Popen(
        [sys.executable, __file__, "--measure", str(path), "--root", str(cache_dir), "--workers", str(workers)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    main_peak = worker_peak = 0.0
    while proc.poll() is None:
        main_peak = max(main_peak, rss_mb(proc.pid))
        worker_peak = max([worker_peak, *(rss_mb(p) for p in descendants(proc.pid))])
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        sys.exit(err[-3000:])
    return {**json.loads(out.strip().splitlines()[-1]), "main_peak_rss_mb": main_peak,
            "worker_peak_rss_mb": worker_peak, "workers": workers}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[25, 100])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--root", type=Path, default=Path("/tmp/gptlit-bench-hf"))
    parser.add_argument("--smoke", action="store_true", help="one tiny corpus and one worker")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.root, args.workers[0])))
        return
    if args.smoke:
        args.sizes_mb, args.workers = [0.25], [1]

    words = (ROOT / "data" / "the-verdict.txt").read_text(encoding="utf-8").split()
    rows = []
    for size in args.sizes_mb:
        path = args.root / f"corpus-{size:g}mb.parquet"
        generate(path, size, words)
        for workers in args.workers:
            rows.append(run(path, args.root / "cache", workers))
            print(json.dumps(rows[-1]), flush=True)

    print(f"\n{cpu_name()}, {os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| text | workers | tokens | time | MB/s | MB/s per worker | tokens/s | peak anon. memory: main "
          "/ largest worker |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['text_mb']:.1f} MB | {r['workers']} | {r['tokens'] / 1e6:.2f} M | {r['seconds']:.1f} s "
            f"| {r['mb_per_s']:.2f} | {r['mb_per_s'] / r['workers']:.2f} | {r['tokens_per_s'] / 1e6:.2f} M "
            f"| {r['main_peak_rss_mb']:.0f} / {r['worker_peak_rss_mb']:.0f} MB |"
        )


if __name__ == "__main__":
    main()
