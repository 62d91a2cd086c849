"""Serving throughput: concurrent streaming clients against one client at a time, on the same serve.py.

    python bench/serve_throughput.py [--clients 1,4,8,16] [--max-tokens 64] [--rounds 2] [--threads N]
                                     [--data data/the-verdict.txt] [--smoke]

GPT-2 124M with random weights (speed does not depend on their values; eos_id=null so every reply is
max_tokens long), served by ``serve.py max_batch=16``. At each level, every client streams --rounds chat-free
completions one after another (prompts are different slices of --data, 20 to 60 tokens), so that many
requests are in flight at once. Printed per level: aggregate tokens/s and its ratio to one client (the same
server decoding one request at a time), time to first token and inter-token latency (p50/p95, as the clients
see them), and the server's peak RSS. ``--smoke`` runs a tiny model with a few tokens per request, to check
that the script runs (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import re

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gptlit.core.model import GPTConfig, GPTModel  # noqa: E402
from gptlit.core.tokenizer import encode, get_tokenizer  # noqa: E402
from gptlit.weights.io import model_sizes, save_safetensors  # noqa: E402

SMOKE_CONFIG = GPTConfig(context_length=256, **model_sizes()["tiny"])
FALLBACK_TEXT = "Every effort moves you forward, and the painter looked at the canvas again. " * 40


def prompts(text: str, n: int) -> list[str]:
    """``n`` different prompts of 20 to 60 tokens, cut from ``text``."""
    ids = encode(text)
    tokenizer = get_tokenizer()
    out, at = [], 0
    for i in range(n):
        length = 20 + (i * 7) % 41
        if at + length > len(ids):
            at = 0
        out.append(tokenizer.decode(ids[at : at + length]))
        at += length
    return out


class Server:
    def __init__(self, ckpt: Path, threads: int | None, log: Path):
        args = [sys.executable, "serve.py", f"ckpt_path={ckpt}", "port=0", "max_batch=16", "max_queue=64",
                "eos_id=null", "model_name=bench"]
        if threads is not None:
            args.append(f"threads={threads}")
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            found = re.search(r"http://127\.0\.0\.1:\d+", log.read_text())
            if found:
                try:
                    httpx.get(found.group(0) + "/health", timeout=5).raise_for_status()
                    self.url = found.group(0)
                    return
                except httpx.HTTPError:
                    pass
            if self.proc.poll() is not None:
                raise SystemExit(f"serve.py exited:\n{log.read_text()}")
            time.sleep(0.2)
        raise SystemExit(f"serve.py did not start:\n{log.read_text()}")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def stream_one(client: httpx.Client, prompt: str, max_tokens: int) -> dict:
    """One streamed completion: when it was sent, when each piece of text arrived, its token count."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    arrivals, tokens = [], 0
    with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["text"]:
                arrivals.append(time.perf_counter())
    return {"sent": sent, "arrivals": arrivals, "tokens": tokens}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def run_level(server: Server, texts: list[str], clients: int, rounds: int, max_tokens: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    peak = [server.rss_mb()]
    done = threading.Event()

    def client(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            for r in range(rounds):
                result = stream_one(http, texts[(index * rounds + r) % len(texts)], max_tokens)
                with lock:
                    results.append(result)

    def watch_memory() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], server.rss_mb())

    watcher = threading.Thread(target=watch_memory)
    watcher.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    tokens = sum(r["tokens"] for r in results)
    ttft = [(r["arrivals"][0] - r["sent"]) * 1000 for r in results if r["arrivals"]]
    itl = [(b - a) * 1000 for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:])]
    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall": wall, "rate": tokens / wall,
            "ttft": ttft, "itl": itl, "rss": peak[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,8,16", help="concurrency levels, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests each client sends one after another")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "the-verdict.txt", help="text the prompts are cut from")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, a few tokens: does the script run?")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    max_tokens, rounds = (8, 1) if args.smoke else (args.max_tokens, args.rounds)
    text = args.data.read_text(encoding="utf-8") if args.data.is_file() else FALLBACK_TEXT
    texts = prompts(text, max(levels) * rounds + 1)

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = SMOKE_CONFIG if args.smoke else GPTConfig()
        ckpt = save_safetensors(GPTModel(config).eval(), Path(tmp) / "model.safetensors")
        server = Server(ckpt, args.threads, Path(tmp) / "serve.log")
        try:
            with httpx.Client(base_url=server.url, timeout=600) as http:  # warm-up: first-call allocations
                stream_one(http, texts[-1], max_tokens)
            rows = []
            for clients in levels:
                # One client alone gets the same number of requests as the next level sends in total, at least
                # four, so its rate is not one request's.
                level_rounds = max(4, rounds) if clients == 1 else rounds
                rows.append(run_level(server, texts, clients, level_rounds, max_tokens))
                print(f"  {clients} clients: {rows[-1]['rate']:.1f} tokens/s", file=sys.stderr, flush=True)
        finally:
            server.stop()

    base = next((r for r in rows if r["clients"] == 1), rows[0])
    name = "tiny model (smoke)" if args.smoke else "GPT-2 124M (random weights)"
    print(f"{name}, streaming completions of {max_tokens} tokens, greedy, prompts of 20-60 tokens; "
          f"server threads: {args.threads or torch.get_num_threads()}; torch {torch.__version__}; "
          f"{platform.machine()}")
    print()
    print("| clients | requests | tokens | wall s | tokens/s | x one at a time | TTFT p50 ms | TTFT p95 ms "
          "| ITL p50 ms | ITL p95 ms | server RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['tokens']} | {r['wall']:.1f} | {r['rate']:.1f} | "
              f"{r['rate'] / base['rate']:.2f} | {percentile(r['ttft'], 0.5):.0f} | {percentile(r['ttft'], 0.95):.0f} | "
              f"{percentile(r['itl'], 0.5):.1f} | {percentile(r['itl'], 0.95):.1f} | {r['rss']:.0f} |")
    print()
    by = {r["clients"]: r for r in rows}
    if 8 in by:
        print(f"8 clients vs one at a time: {by[8]['rate'] / base['rate']:.2f}x the tokens/s (target >= 3x)")
    if 16 in by:
        print(f"server RSS: {by[16]['rss']:.0f} MB at 16 clients vs {base['rss']:.0f} MB at 1 "
              f"({by[16]['rss'] - base['rss']:+.0f} MB, the KV-cache slots the extra requests use)")


if __name__ == "__main__":
    main()
