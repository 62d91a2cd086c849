"""Where the time of one training step goes: torch.profiler over gptlit's step, grouped by kind of work.

    python bench/profile_step.py [--steps 2] [--override trainer.precision=bf16-mixed] [--table] [--smoke]

The step is the plain loop of train_throughput.py (GPT-2 124M, context 256, batch 2, the default config plus the
overrides), so the groups add up to what that benchmark times. Each ATen operator's own time (not counting the
operators it calls) goes to one group, so no time is counted twice. The parts come from gptlit.cli.build, as
train.py builds them. ``--smoke`` profiles one step of a tiny model at context 32, to check that the script runs
(tests/test_bench.py).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from train_throughput import ROOT, SMOKE_OVERRIDES, build_run, plain_step

# First match wins; an operator matching none is "other".
GROUPS = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")),
    ("dropout RNG and masks", ("aten::bernoulli", "aten::native_dropout", "aten::rand")),
    ("attention softmax and mask", ("aten::_softmax", "aten::_safe_softmax", "aten::tril", "aten::where",
                                    "aten::isneginf", "aten::all", "aten::masked_fill", "aten::_scaled_dot")),
    ("casts and layout copies", ("aten::_to_copy", "aten::to", "aten::copy_")),
    ("optimizer", ("aten::_fused_adam", "aten::_foreach", "aten::lerp", "aten::addcdiv", "aten::addcmul",
                   "aten::sqrt", "Optimizer.")),
    ("cross-entropy (log-softmax over 50257)", ("aten::_log_softmax", "aten::nll_loss")),
    ("layer norm, GELU", ("aten::native_layer_norm", "aten::gelu")),
    ("elementwise (dropout scale, residual adds, grads)", ("aten::mul", "aten::div", "aten::add", "aten::fill_",
                                                           "aten::zero_", "aten::sum")),
)


def group_of(name: str) -> str:
    for group, prefixes in GROUPS:
        if name.startswith(prefixes):
            return group
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="profiled steps, after one warm-up step")
    parser.add_argument("--data", default=str(ROOT / "data" / "the-verdict.txt"))
    parser.add_argument("--override", action="append", default=[], help="a Hydra override (repeatable)")
    parser.add_argument("--table", action="store_true", help="also print the profiler's top operators")
    parser.add_argument("--smoke", action="store_true", help="one step of a tiny model: does the script run?")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.override = 1, [*SMOKE_OVERRIDES, *args.override]

    import torch
    from torch.profiler import ProfilerActivity, profile

    cfg, datamodule, module, _ = build_run(args.data, args.override)
    step = plain_step(cfg, datamodule, module, torch.device("cpu"))
    precision = cfg.trainer.precision

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    if args.table:
        print(events.table(sort_by="self_cpu_time_total", row_limit=25))
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        totals[group_of(event.key)] += event.self_cpu_time_total / 1e6 / args.steps
    whole = sum(totals.values())
    print(f"precision {precision}, optimizer fused={cfg.optimizer.get('fused')}, kernels {cfg.model.kernels}")
    print(f"{'per step':52} {'seconds':>8} {'share':>7}")
    for group, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{group:52} {seconds:8.3f} {seconds / whole:7.1%}")
    print(f"{'total (operator self time)':52} {whole:8.3f}")


if __name__ == "__main__":
    main()
