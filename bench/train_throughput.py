"""Training throughput of GPT-2 124M in the book's chapter-5 setting: the book's code against gptlit.

    python bench/train_throughput.py [--rounds 16] [--steps 1] [--warmup 2] [--override trainer.precision=32-true] [--smoke]

Three contenders train on The Verdict (context 256, batch 2, drop_rate 0.1, AdamW lr 4e-4 weight decay 0.1):

- book: the book's ``GPTModel`` (llms_from_scratch.ch04) and its training step (``calc_loss_batch``, then
  zero_grad, backward, step) in fp32, with AdamW as the book builds it;
- plain: gptlit's GPTModel, optimizer and precision from the default config, in a bare PyTorch loop;
- lightning: gptlit's real path: the config composed from conf/ and built by gptlit.cli.build as train.py
  builds it, with evaluation, checkpoints, logger and progress bar off so that only steps run.

Both gptlit contenders take their parts from gptlit.cli.build, so they measure what train.py runs.

Each runs in a process of its own (so its peak RSS is its own) and the three take turns: every round each one
runs ``--steps`` steps while the others wait, so a load that comes and goes on a shared machine hits all of them
alike, and each ratio is the median over rounds of the ratio within a round. A step is timed from fetching its
batch to the end of the optimizer step (Lightning: from one batch's start hook to the next one's). The table
gives the median step, tokens/s, ratios, and MFU against the fp32 and bf16 matmul rates measured on the machine
in the same run (FLOPs per token as gptlit/planning/flops.py counts them). ``--smoke`` runs one round of
one step of a tiny model at context 32, to check that the script runs (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("book", "plain", "lightning")
# A datasheet peak: the Lightning run then skips measuring the matmul rate when fit starts.
SMOKE_OVERRIDES = ["model=tiny", "data.context_length=32", "callbacks.throughput.peak_flops=1e12"]
# The callbacks that stay in the timed Lightning run: throughput is part of every default run, so its cost counts.
TIMED_CALLBACKS = ("throughput", "fast_float32_matmuls")
TIMED_TRAINER = ["~logger", "+trainer.enable_checkpointing=false", "+trainer.enable_progress_bar=false",
                 "trainer.enable_model_summary=false", "trainer.limit_val_batches=0", "trainer.max_epochs=-1",
                 "trainer.max_steps=1000000000"]


def peak_rss_bytes() -> int:
    # psutil has no peak figure on Linux; the kernel's own high-water mark is in KiB there.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def compose_config(data_path: str, overrides: list[str], run_dir: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"data.path={data_path}", f"run_dir={run_dir}", *overrides])


def build_run(data_path: str, overrides: list[str], keep_callbacks: tuple[str, ...] | None = None):
    """The datamodule, module and trainer that train.py builds from these overrides (gptlit.cli.build);
    ``keep_callbacks`` names the entries of conf/callbacks to keep (default: all)."""
    from omegaconf import open_dict

    from gptlit.cli.build import build

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_config(data_path, overrides, run_dir)
        if keep_callbacks is not None:
            with open_dict(cfg):
                cfg.callbacks = {k: v for k, v in cfg.callbacks.items() if k in keep_callbacks}
        return cfg, *build(cfg)


def batches(loader):
    """The loader's batches forever, reshuffled every pass like epochs."""
    while True:
        yield from loader


def serve(conn, step) -> None:
    """Answer the parent's ("run", n) with the times of n steps, until it sends "stop"."""
    conn.send(("ready", None))
    while True:
        command, n = conn.recv()
        if command == "stop":
            conn.send(("rss", peak_rss_bytes()))
            return
        times = []
        for _ in range(n):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        conn.send(("times", times))


class Contenders:
    """Worker processes, one per contender, each started from ``targets`` (kind: (worker, args)) and answering as
    ``serve`` does; they take turns because the parent asks one at a time."""

    def __init__(self, targets: dict[str, tuple]):
        ctx = mp.get_context("spawn")
        self.conns, self.procs = {}, {}
        for kind, (worker, worker_args) in targets.items():
            parent, child = ctx.Pipe()
            self.procs[kind] = ctx.Process(target=worker, args=(child, *worker_args), daemon=True)
            self.procs[kind].start()
            self.conns[kind] = parent
        for kind, conn in self.conns.items():
            tag, _ = conn.recv()
            assert tag == "ready", (kind, tag)

    def turn(self, kind: str, n: int) -> list[float]:
        """The times of ``n`` steps of ``kind``, while the others wait."""
        self.conns[kind].send(("run", n))
        tag, times = self.conns[kind].recv()
        assert tag == "times", (kind, tag)
        return times

    def stop(self) -> dict[str, int]:
        """Stop every worker; each one's peak RSS in bytes."""
        rss = {}
        for kind, conn in self.conns.items():
            conn.send(("stop", 0))
            rss[kind] = conn.recv()[1]
            self.procs[kind].join(timeout=60)
        return rss


def book_worker(conn, data_path: str, config: dict) -> None:
    import torch
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch05 import calc_loss_batch

    from gptlit.data.text import TextDataModule

    data = TextDataModule(data_path, context_length=config["context_length"], batch_size=2)
    data.setup()
    stream = batches(data.train_dataloader())
    torch.manual_seed(123)
    model = GPTModel(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1)

    def step() -> None:
        input_batch, target_batch = next(stream)
        optimizer.zero_grad()
        loss = calc_loss_batch(input_batch, target_batch, model, "cpu")
        loss.backward()
        optimizer.step()

    serve(conn, step)


def plain_step(cfg, datamodule, module, device):
    """gptlit's training step in a bare PyTorch loop, over parts built by gptlit.cli.build; returns the loss."""
    import torch

    from gptlit.training.compile import CompiledForward
    from gptlit.training.module import cross_entropy
    from gptlit.core.device import precision_dtype

    stream = batches(datamodule.train_dataloader())
    model = module.model.to(device).train()
    optimizer = module.configure_optimizers()
    # trainer.compile=true compiles the forward as GPTLitModule does (bench/compile_speed.py measures that through
    # Lightning); `+compile=true` is how bench/results/2026-11-amd-epyc-avx2.md asked for it, before the setting.
    forward = CompiledForward(model) if cfg.trainer.get("compile") or cfg.get("compile") else model
    precision = str(cfg.trainer.precision)
    # Lightning's "-mixed" precisions autocast the forward pass; "32-true" runs as is.
    mixed = precision.endswith("-mixed")
    autocast = torch.autocast(device.type, dtype=precision_dtype(precision)) if mixed else nullcontext()

    def step():
        inputs, targets = (t.to(device) for t in next(stream))
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = cross_entropy(forward(inputs), targets)
        loss.backward()
        optimizer.step()
        return loss

    return step


def plain_worker(conn, data_path: str, overrides: list[str]) -> None:
    import torch

    cfg, datamodule, module, trainer = build_run(data_path, overrides)
    device = trainer.strategy.root_device
    if device.type == "cuda":
        # What the FastFloat32Matmuls callback does in the Lightning run.
        torch.set_float32_matmul_precision("high")
    step = plain_step(cfg, datamodule, module, device)
    # Lightning's progress bar reads the loss every step; reading it here syncs the device alike.
    serve(conn, lambda: step().item())


def lightning_worker(conn, data_path: str, overrides: list[str]) -> None:
    import lightning as L

    class Pacer(L.Callback):
        """Times each step from its start hook to the next one's and hands the parent control between blocks."""

        def __init__(self):
            self.todo = 0
            self.times: list[float] = []
            self.started: float | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            now = time.perf_counter()
            if self.started is not None:
                self.times.append(now - self.started)
                self.todo -= 1
            if self.todo == 0:
                conn.send(("times", self.times) if self.started is not None else ("ready", None))
                command, n = conn.recv()
                if command == "stop":
                    conn.send(("rss", peak_rss_bytes()))
                    trainer.should_stop = True
                    raise SystemExit(0)
                self.todo, self.times = n, []
            self.started = time.perf_counter()

    _, datamodule, module, trainer = build_run(data_path, [*overrides, *TIMED_TRAINER], TIMED_CALLBACKS)
    trainer.callbacks.insert(0, Pacer())
    try:
        trainer.fit(module, datamodule=datamodule)
    except SystemExit:
        pass


def machine() -> str:
    import torch

    from gptlit.planning.precision import cpu_info

    info = cpu_info()
    name = info.get("model name", "unknown CPU")
    flags = set(info.get("flags", "").split())
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags) or "none listed"
    return (
        f"{name}, {os.cpu_count()} CPUs ({isa}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=16, help="turns each contender takes (default 16)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per turn (default 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps each runs first (default 2)")
    parser.add_argument("--data", default=str(ROOT / "data" / "the-verdict.txt"), help="the training text")
    parser.add_argument(
        "--override", action="append", default=[], help="a Hydra override for both gptlit runs (repeatable)"
    )
    parser.add_argument("--only", nargs="+", choices=KINDS, default=list(KINDS), help="run only these")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDE[,OVERRIDE...]",
        help="one more plain loop with these overrides on top, to measure one lever (repeatable)",
    )
    parser.add_argument("--smoke", action="store_true", help="one step of a tiny model: does the script run?")
    args = parser.parse_args()
    matmul_size = 256 if args.smoke else 2048
    if args.smoke:
        args.rounds, args.steps, args.warmup = 1, 1, 1
        args.override = [*SMOKE_OVERRIDES, *args.override]

    import torch

    from gptlit.core.model import GPTConfig
    from gptlit.planning.flops import measure_matmul_flops, training_flops_per_token
    from gptlit.planning.precision import training_precision
    from gptlit.weights.io import model_sizes

    # The book's GPT_CONFIG_124M (GPTConfig's defaults, the book's keys) at context 256; conf/model/tiny.yaml.
    book_cfg = GPTConfig(context_length=32, **model_sizes()["tiny"]) if args.smoke else GPTConfig(context_length=256)

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_config(args.data, args.override, run_dir)
        precision = training_precision(cfg.trainer.precision, str(cfg.trainer.accelerator), cfg.model.emb_dim,
                                       cfg.model.vocab_size, cfg.data.context_length, cfg.data.batch_size)
    print(f"machine: {machine()}")
    print(f"gptlit precision: {precision}; overrides: {args.override or 'none'}")
    print(f"{args.warmup} warm-up steps, then {args.rounds} rounds of {args.steps} steps each, taking turns")

    targets = {
        "book": (book_worker, (args.data, book_cfg.to_dict())),
        "plain": (plain_worker, (args.data, args.override)),
        "lightning": (lightning_worker, (args.data, args.override)),
    }
    names = {"book": "book (fp32)", "plain": f"gptlit plain loop ({precision})", "lightning": f"gptlit Lightning ({precision})"}
    for spec in args.variant:
        label, _, extra = spec.partition("=")
        targets[label] = (plain_worker, (args.data, [*args.override, *extra.split(",")]))
        names[label] = f"plain + {extra}"
        args.only.append(label)
    contenders = Contenders({kind: targets[kind] for kind in args.only})
    conns, turn = contenders.conns, contenders.turn

    rates = {torch.float32: [], torch.bfloat16: []}

    def measure_rates() -> None:
        for dtype, found in rates.items():
            # Where bf16 is emulated (a CPU without AVX512-BF16 or AMX: about 1 GFLOP/s), one 2048^3 product takes
            # 20 s; a 512^3 one first tells whether the rate is worth the time.
            rough = measure_matmul_flops("cpu", dtype, size=min(512, matmul_size), repeats=1)
            slow = dtype != torch.float32 and rates[torch.float32] and rough < 0.1 * max(rates[torch.float32])
            found.append(rough if slow else measure_matmul_flops("cpu", dtype, size=matmul_size))

    measure_rates()
    for kind in conns:
        turn(kind, args.warmup)
    # rounds[kind][r]: the median step of that contender's turn in round r.
    rounds: dict[str, list[float]] = {kind: [] for kind in conns}
    for r in range(args.rounds):
        for kind in conns:
            rounds[kind].append(statistics.median(turn(kind, args.steps)))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rounds.items()), flush=True)
    measure_rates()
    rss = contenders.stop()

    tokens = 2 * book_cfg.context_length
    flops = training_flops_per_token(book_cfg) * tokens
    fp32, bf16 = max(rates[torch.float32]), max(rates[torch.bfloat16])
    print()
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(f"matmul rate ({matmul_size}^3, best of both measurements): fp32 {fp32 / 1e9:.0f} GFLOP/s, bf16 {bf16 / 1e9:.0f} GFLOP/s")
    print(f"model FLOPs per step: {flops / 1e9:.0f} GFLOP = {tokens} tokens x (6 N + 12 L T d) per token")
    print()
    print(f"{'':34} {'median step':>11} {'tokens/s':>9} {'IQR tokens/s':>15} {'MFU fp32':>9} {'MFU bf16':>9} {'peak RSS':>9}")
    medians = {}
    for kind in conns:
        median = medians[kind] = statistics.median(rounds[kind])
        q1, _, q3 = statistics.quantiles(rounds[kind], n=4) if len(rounds[kind]) > 1 else [median] * 3
        print(
            f"{names[kind]:34.34} {median:10.3f}s {tokens / median:9.1f} {tokens / q3:7.1f}-{tokens / q1:<7.1f}"
            f" {flops / median / fp32:9.1%} {flops / median / bf16:9.1%} {rss[kind] / 2**30:7.2f} G"
        )

    def speedup(fast: str, slow: str) -> float:
        # The median over rounds of the ratio within each round: a load that drifts between rounds cancels out.
        return statistics.median(s / f for s, f in zip(rounds[slow], rounds[fast]))

    print()
    if "book" in medians and "lightning" in medians:
        print(f"gptlit Lightning / book: {speedup('lightning', 'book'):.2f}x tokens/s (target >= 4)")
    if "book" in medians and "plain" in medians:
        print(f"gptlit plain loop / book: {speedup('plain', 'book'):.2f}x tokens/s")
    for kind in [k for k in medians if k not in KINDS]:
        if "plain" in medians:
            print(f"{names[kind]} / plain loop: {speedup(kind, 'plain'):.2f}x tokens/s")
    if "plain" in medians and "lightning" in medians:
        print(f"Lightning step vs plain loop: {1 / speedup('lightning', 'plain') - 1:+.1%} time per step (target within 5%)")

if __name__ == "__main__":
    main()
