"""Training and generation speed of a Qwen3-style model of GPT-2 124M's compute against GPT-2 124M, side by side.

    python bench/families_throughput.py [--rounds 4] [--steps 2] [--context 256] [--batch 2] [--new-tokens 64]
                                        [--models gpt124m qwen3_124m] [--threads N] [--smoke]

Each model is composed from conf/ as train.py composes it (``model=NAME data.context_length=N``, the vocabulary
set by the tokenizer as train.py sets it) and trained in a bare loop (forward, cross-entropy, backward, the
configured AdamW step) in fp32 on random tokens, the models taking turns for --rounds rounds of --steps steps, so
that a load that comes and goes hits both alike; the best round counts. Then each generates --new-tokens tokens
greedily with the KV cache from a 4-token prompt, taking turns the same way. Printed: parameters, FLOPs per token,
training tokens/s and MFU against the matmul rate measured in this run, generation tokens/s, and each model's
ratio to the first. ``--smoke`` runs conf/model/tiny and qwen3_tiny for a step, to check that the script runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from gptlit.cli.build import apply_tokenizer  # noqa: E402
from gptlit.core.families import build_model  # noqa: E402
from gptlit.core.generation import generate  # noqa: E402
from gptlit.planning.flops import measure_matmul_flops, step_matmul_shapes, training_flops_per_token  # noqa: E402
from gptlit.planning.plan import parameter_count  # noqa: E402


def composed(name: str, context: int, batch: int):
    """The model config and optimizer factory train.py would build for ``model=name``."""
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=[f"model={name}", f"data.context_length={context}",
                                          f"data.batch_size={batch}", "run_dir=."])
    apply_tokenizer(cfg)
    return instantiate(cfg.model), instantiate(cfg.optimizer)


def train_seconds(model, optimizer, tokens: torch.Tensor, steps: int) -> float:
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def generate_seconds(model, new_tokens: int) -> float:
    prompt = torch.tensor([[6109, 3626, 6100, 345]])  # "Every effort moves you"
    start = time.perf_counter()
    generate(model, prompt, new_tokens, use_cache=True)
    return (time.perf_counter() - start) / new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt124m", "qwen3_124m"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--data", help="unused (tests/test_bench.py passes The Verdict to every script)")
    args = parser.parse_args()
    if args.smoke:
        args.models, args.rounds, args.steps, args.context, args.new_tokens = ["tiny", "qwen3_tiny"], 1, 1, 32, 4
    if args.threads:
        torch.set_num_threads(args.threads)

    contenders = {}
    for name in args.models:
        torch.manual_seed(0)
        config, optimizer_factory = composed(name, args.context, args.batch)
        model = build_model(config).train()
        contenders[name] = (config, model, optimizer_factory(model))
    generator = torch.Generator().manual_seed(0)
    tokens = {name: torch.randint(0, cfg.vocab_used or cfg.vocab_size, (args.batch, args.context + 1),
                                  generator=generator) for name, (cfg, _, _) in contenders.items()}
    for name, (_, model, optimizer) in contenders.items():
        train_seconds(model, optimizer, tokens[name], 1)  # warm-up: allocation, kernel choice, optimizer state

    train = {name: float("inf") for name in contenders}
    for _ in range(args.rounds):
        for name, (_, model, optimizer) in contenders.items():
            train[name] = min(train[name], train_seconds(model, optimizer, tokens[name], args.steps))
    decode = {name: float("inf") for name in contenders}
    for _, model, _ in contenders.values():
        model.eval()
    with torch.inference_mode():
        for name, (_, model, _) in contenders.items():
            generate_seconds(model, 2)  # warm-up
        for _ in range(args.rounds):
            for name, (_, model, _) in contenders.items():
                decode[name] = min(decode[name], generate_seconds(model, args.new_tokens))

    step_tokens = args.batch * args.context
    first = next(iter(contenders))
    peak = measure_matmul_flops("cpu", torch.float32, repeats=3,
                                shapes=step_matmul_shapes(contenders[first][0], step_tokens))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; context {args.context}, batch {args.batch}, fp32; matmul rate "
          f"{peak / 1e9:.1f} GFLOP/s (measured now, on {first}'s shapes)")
    print()
    print("| model | family | parameters | GFLOP/token | train tokens/s | MFU | x first | generate tokens/s | x first |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (cfg, _, _) in contenders.items():
        rate = step_tokens / train[name]
        flops = training_flops_per_token(cfg, args.context)
        print(f"| {name} | {cfg.family} | {parameter_count(cfg) / 1e6:.1f}M | {flops / 1e9:.2f} | {rate:,.0f} | "
              f"{rate * flops / peak:.2f} | {train[first] / train[name]:.2f} | {1 / decode[name]:.1f} | "
              f"{decode[first] / decode[name]:.2f} |")


if __name__ == "__main__":
    main()
