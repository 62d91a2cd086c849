"""What ``trainer.compile=true`` buys in training: gptlit's Lightning run eager and compiled, side by side.

    python bench/compile_speed.py [--rounds 16] [--steps 1] [--warmup 3] [--override KEY=VALUE ...] [--smoke]

Two contenders train with the default config (GPT-2 124M in the book's chapter-5 setting: context 256, batch 2,
dropout 0.1, AdamW) plus the overrides, each built from conf/ by gptlit.cli.build as train.py builds it, with
evaluation, checkpoints, logger and progress bar off (the Lightning contender of train_throughput.py): one with
``trainer.compile=false``, one with ``trainer.compile=true``, so the compiled one runs the module's own compiled
forward, not a copy of it. Each runs in a process of its own (its peak RSS is its own) and they take turns: every
round each runs ``--steps`` steps while the other waits, so a load that comes and goes on a shared machine hits
both alike, and the ratio is the median over rounds of the ratio within a round. The untimed warm-up steps
include inductor's compilation; the first step of each is reported on its own. Evaluation is compiled too but
not timed here. ``--smoke`` runs one round of one step of a tiny model at context 32, to check that the script
runs (tests/test_bench.py); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from train_throughput import ROOT, SMOKE_OVERRIDES, Contenders, compose_config, lightning_worker, machine

CONTENDERS = {"eager": "trainer.compile=false", "compiled": "trainer.compile=true"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=16, help="turns each contender takes (default 16)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per turn (default 1)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps each runs first, compiling (default 3)")
    parser.add_argument("--data", default=str(ROOT / "data" / "the-verdict.txt"), help="the training text")
    parser.add_argument("--override", action="append", default=[], help="a Hydra override for both (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="one step of a tiny model: does the script run?")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.steps, args.warmup = 1, 1, 1
        args.override = [*SMOKE_OVERRIDES, *args.override]

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_config(args.data, args.override, run_dir)
    tokens = cfg.data.batch_size * cfg.data.context_length
    print(f"machine: {machine()}")
    print(f"overrides: {args.override or 'none'}; {tokens} tokens a step")
    print(f"{args.warmup} warm-up steps (compiling), then {args.rounds} rounds of {args.steps} steps each, taking turns")

    # The setting comes last, so an --override of trainer.compile cannot make both contenders alike.
    contenders = Contenders({kind: (lightning_worker, (args.data, [*args.override, setting]))
                             for kind, setting in CONTENDERS.items()})
    conns, turn = contenders.conns, contenders.turn

    # One after the other, not at once: two compilations in parallel would each take the other's cores.
    first = {kind: turn(kind, args.warmup)[0] for kind in conns}
    rounds: dict[str, list[float]] = {kind: [] for kind in conns}
    for r in range(args.rounds):
        for kind in conns:
            rounds[kind].append(statistics.median(turn(kind, args.steps)))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in rounds.items()), flush=True)
    rss = contenders.stop()

    print()
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print()
    print(f"{'':22} {'first step':>10} {'median step':>11} {'tokens/s':>9} {'IQR tokens/s':>15} {'peak RSS':>9}")
    for kind, setting in CONTENDERS.items():
        median = statistics.median(rounds[kind])
        q1, _, q3 = statistics.quantiles(rounds[kind], n=4) if len(rounds[kind]) > 1 else [median] * 3
        print(f"{setting:22} {first[kind]:9.2f}s {median:10.3f}s {tokens / median:9.1f} "
              f"{tokens / q3:7.1f}-{tokens / q1:<7.1f} {rss[kind] / 2**30:7.2f} G")
    # The median over rounds of the ratio within each round: a load that drifts between rounds cancels out.
    ratio = statistics.median(eager / compiled for eager, compiled in zip(rounds["eager"], rounds["compiled"]))
    print()
    print(f"compiled / eager: {ratio:.2f}x tokens/s; compiling cost {first['compiled'] - first['eager']:.1f} s "
          f"more on the first step")


if __name__ == "__main__":
    main()
