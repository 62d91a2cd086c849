"""Wall time to a good model: the book's recipe against experiment=speedrun, one corpus, one machine, one run.

    python bench/time_to_loss.py [--data ../shared/data/kjv.txt | --data stdlib] [--budget 900] [--eval-every 50] [--eval-windows 64]
                                 [--vocab-size 8192] [--out bench/results/time_to_loss] [--smoke]

Three runs, one after the other, each composed from conf/ as train.py composes it and trained in this process:

1. **book**: the book's chapter-5 recipe at the speedrun model's parameter count: GPT-2's block (6 layers of 256,
   4 heads, dropout 0.1, its own output head), AdamW lr 4e-4 and weight decay 0.1 without a schedule, batch 2,
   context 256, GPT-2's BPE; trained for --budget seconds. Its best validation bits per byte is the target.
2. **speedrun**: ``experiment=speedrun`` (conf/model/speedrun_20m: the modern block, Muon and AdamW, WSD) with
   GPT-2's BPE, until its validation bits per byte reaches the target, or the budget ends.
3. **speedrun+bpe**: the same with a BPE of --vocab-size trained on the corpus (tokenizer.py's training).

Wall time counts training only: the seconds of the optimizer steps (forward, backward, update), not the
evaluations, which every run makes on the first --eval-windows windows of the validation split (the same for every batch size)
every --eval-every steps. The speedrun's schedule (WSD's decay) is planned to end after --speedrun-share (a third) of the budget,
in steps timed on a short probe run first: the target of the issue is 3x less time.
Bits per byte divide the summed loss by the UTF-8 bytes the scored tokens stand for, so runs with different
tokenizers compare. Printed: a table of each run's best bits per byte, the wall time to the target and its ratio
to the book's; written: the curves against wall time (--out.png) and the table (--out.md). ``--smoke`` runs
every path for a few seconds on The Verdict. ``--data stdlib`` is the second corpus, of another kind than the
Bible's prose: this Python's standard library source (its top-level modules in name order, the first 4.1 MB),
which every machine that runs this has.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from gptlit.cli.build import build  # noqa: E402
from gptlit.data.tokenizer_training import train_bpe  # noqa: E402

BOOK = ["model=tiny", "model.emb_dim=256", "model.n_layers=6", "model.n_heads=4", "model.drop_rate=0.1",
        "optimizer=adamw", "optimizer.lr=0.0004", "optimizer.weight_decay=0.1", "scheduler=none", "data.batch_size=2"]
SPEEDRUN = ["experiment=speedrun"]
# --smoke: models and batches small enough for a few seconds a run.
SMOKE = {"book": ["model.emb_dim=32", "model.n_layers=1", "model.n_heads=2"],
         "speedrun": ["model.emb_dim=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_groups=2",
                      "model.head_dim=16", "model.hidden_dim=64", "data.batch_size=2"]}


class Clock(L.Callback):
    """Counts the seconds of training steps only, records (seconds, val/bpb) at every evaluation, and stops the
    run at the budget or once val/bpb reaches the target."""

    def __init__(self, budget: float, target: float | None):
        self.budget, self.target = budget, target
        self.seconds, self.curve = 0.0, []
        self._started = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seconds += time.perf_counter() - self._started
        if self.seconds >= self.budget:
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or "val/bpb" not in trainer.callback_metrics:
            return
        bpb = float(trainer.callback_metrics["val/bpb"])
        self.curve.append((self.seconds, bpb))
        if self.target is not None and bpb <= self.target:
            trainer.should_stop = True


def composed(name: str, overrides: list[str], data: Path, work: Path, args, max_steps: int):
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=[
            *overrides, f"data.path={data}", "data.context_length=256", "trainer.accelerator=cpu",
            "trainer.precision=32-true", f"trainer.val_check_interval={args.eval_every}",
            "trainer.max_epochs=1000",
            f"trainer.max_steps={max_steps}", "callbacks.sample_text=null", "callbacks.loss_plot=null",
            "callbacks.export_weights=null", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
            "~logger", f"run_dir={work / name}"])
    # The same windows for every run, whatever its batch size: a run with larger batches scores no more text.
    cfg.trainer.limit_val_batches = max(args.eval_windows // cfg.data.batch_size, 1)
    return cfg


def planned_steps(overrides: list[str], data: Path, work: Path, args) -> int:
    """How many steps of this run fit args.speedrun_share of the budget: its schedule (WSD's decay) is planned to
    end there, timed on a few real steps first."""
    probe = Clock(float("inf"), None)
    datamodule, module, trainer = build(composed("probe", overrides, data, work, args, max_steps=4))
    trainer.callbacks.append(probe)
    trainer.fit(module, datamodule=datamodule)
    per_step = probe.seconds / max(trainer.global_step, 1)
    return max(int(args.speedrun_share * args.budget / per_step), 2)


def run(name: str, overrides: list[str], data: Path, work: Path, args, target: float | None,
        max_steps: int) -> Clock:
    clock = Clock(args.budget, target)
    cfg = composed(name, overrides, data, work, args, max_steps)
    datamodule, module, trainer = build(cfg)
    trainer.callbacks.append(clock)
    trainer.fit(module, datamodule=datamodule)
    print(f"{name}: {len(clock.curve)} evaluations, {clock.seconds:.0f} s of training, best val bpb "
          f"{min(b for _, b in clock.curve):.4f}" if clock.curve else f"{name}: no evaluation")
    return clock


def optimizer_overhead(overrides: list[str], data: Path, work: Path, args, repeats: int = 5) -> str:
    """Muon's cost per step against AdamW's on the speedrun model (GPT-2's BPE): the optimizer step alone, best of
    ``repeats``, next to the forward and backward of one batch."""
    from gptlit.training.muon import MuonAdamW

    cfg = composed("overhead", overrides, data, work, args, max_steps=1)
    _, module, _ = build(cfg)
    model = module.model
    tokens = torch.randint(0, model.cfg.vocab_size, (cfg.data.batch_size, cfg.data.context_length))

    def best(work_once) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work_once()
            times.append(time.perf_counter() - started)
        return min(times)

    def forward_backward():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()

    step = best(forward_backward)
    muon = MuonAdamW(model, lr=1e-9, adamw_lr=1e-9)  # tiny rates: the weights stay as they are
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-9)
    muon_s, adamw_s = best(muon.step), best(adamw.step)
    return (f"optimizer step alone (speedrun model, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
            f"parameters, batch {cfg.data.batch_size} x {cfg.data.context_length}): AdamW {adamw_s * 1e3:.0f} ms, "
            f"Muon + AdamW {muon_s * 1e3:.0f} ms (Newton-Schulz in {muon.muon.ns_dtype}); forward + backward "
            f"{step * 1e3:.0f} ms; Muon's step costs {(muon_s - adamw_s) / (step + adamw_s) * 100:.0f}% more time "
            f"per training step than AdamW's")


def machine() -> str:
    """The CPU's model name (platform.processor() is empty or just the architecture on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((seconds for seconds, bpb in curve if bpb <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kjv.txt"))
    parser.add_argument("--budget", type=float, default=900.0, help="seconds of training for the book's recipe")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-windows", type=int, default=64, help="validation windows scored at each evaluation")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--speedrun-share", type=float, default=1 / 3,
                        help="the speedrun's schedule is planned to end after this share of the budget")
    parser.add_argument("--out", default=None, help="write OUT.png (curves) and OUT.md (table)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.budget, args.eval_every, args.eval_windows, args.vocab_size, args.max_steps = 3.0, 2, 4, 512, 6
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = stdlib_corpus(work / "python-stdlib.txt") if args.data == "stdlib" else Path(args.data).resolve()
        smoke = SMOKE if args.smoke else {"book": [], "speedrun": []}
        book_overrides = [*BOOK, *smoke["book"]]
        book = run("book", book_overrides, data, work, args, target=None, max_steps=args.max_steps)
        target = min(b for _, b in book.curve)
        tokenizer = train_bpe(documents_of(data), args.vocab_size, [], work / "bpe" / "tokenizer.json", progress=False)
        runs = {"book": book}
        for name, extra in (("speedrun", []), ("speedrun+bpe", [f"tokenizer.path={tokenizer}"])):
            overrides = [*SPEEDRUN, *smoke["speedrun"], *extra]
            steps = min(planned_steps(overrides, data, work, args), args.max_steps)
            runs[name] = run(name, overrides, data, work, args, target, max_steps=steps)
        size = data.stat().st_size
        overhead = optimizer_overhead([*SPEEDRUN, *smoke["speedrun"]], data, work, args)
    lines = [f"{machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; corpus {data.name} ({size / 1e6:.1f} MB); budget {args.budget:.0f} s of training; target: the book's "
             f"best val bpb {target:.4f}", "",
             "| run | evaluations | training s | best val bpb | s to target | x less time than book |",
             "|---|---:|---:|---:|---:|---:|"]
    book_time = time_to(book.curve, target)
    for name, clock in runs.items():
        reached = time_to(clock.curve, target)
        ratio = f"{book_time / reached:.2f}" if reached else "not reached"
        lines.append(f"| {name} | {len(clock.curve)} | {clock.seconds:.0f} | {min(b for _, b in clock.curve):.4f} | "
                     f"{reached:.0f} | {ratio} |" if reached else
                     f"| {name} | {len(clock.curve)} | {clock.seconds:.0f} | {min(b for _, b in clock.curve):.4f} | "
                     f"- | {ratio} |")
    lines += ["", overhead]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        plot(runs, target, out.with_suffix(".png"))


def stdlib_corpus(path: Path, size: int = 4_100_000) -> Path:
    """This Python's standard library source as one text file of about ``size`` bytes (see the module's doc)."""
    parts, total = [], 0
    for module in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        parts.append(module.read_text(encoding="utf-8", errors="replace"))
        total += len(parts[-1].encode("utf-8"))
        if total >= size:
            break
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def documents_of(path: Path):
    """The corpus's text, for training the tokenizer on it."""
    yield path.read_text(encoding="utf-8")


def plot(runs: dict[str, Clock], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, clock in runs.items():
        axis.plot([s for s, _ in clock.curve], [b for _, b in clock.curve], marker=".", label=name)
    axis.axhline(target, color="grey", linestyle="--", label="the book's best")
    axis.set_xlabel("training seconds")
    axis.set_ylabel("validation bits per byte")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
