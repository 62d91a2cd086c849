"""Wall time to a good model: the book's recipe against experiment=speedrun, one corpus, one machine, one run.

    python bench/time_to_loss.py [--data ../shared/data/kjv.txt] [--budget 900] [--eval-every 50] [--eval-batches 20]
                                 [--vocab-size 8192] [--out bench/results/time_to_loss] [--smoke]

Three runs, one after the other, each composed from conf/ as train.py composes it and trained in this process:

1. **book**: the book's chapter-5 recipe at the speedrun model's parameter count: GPT-2's block (6 layers of 256,
   4 heads, dropout 0.1, its own output head), AdamW lr 4e-4 and weight decay 0.1 without a schedule, batch 2,
   context 256, GPT-2's BPE; trained for --budget seconds. Its best validation bits per byte is the target.
2. **speedrun**: ``experiment=speedrun`` (conf/model/speedrun_20m: the modern block, Muon and AdamW, WSD) with
   GPT-2's BPE, until its validation bits per byte reaches the target, or the budget ends.
3. **speedrun+bpe**: the same with a BPE of --vocab-size trained on the corpus (tokenizer.py's training).

Wall time counts training only: the seconds of the optimizer steps (forward, backward, update), not the
evaluations, which every run makes on the same --eval-batches windows of the validation split every --eval-every
steps. The speedrun's schedule (WSD's decay) is planned to end after --speedrun-share (a third) of the budget,
in steps timed on a short probe run first: the target of the issue is 3x less time.
Bits per byte divide the summed loss by the UTF-8 bytes the scored tokens stand for, so runs with different
tokenizers compare. Printed: a table of each run's best bits per byte, the wall time to the target and its ratio
to the book's; written: the curves against wall time (--out.png) and the table (--out.md). ``--smoke`` runs
every path for a few seconds on The Verdict.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

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
        return compose("train", overrides=[
            *overrides, f"data.path={data}", "data.context_length=256", "trainer.accelerator=cpu",
            "trainer.precision=32-true", f"trainer.val_check_interval={args.eval_every}",
            f"trainer.limit_val_batches={args.eval_batches}", "trainer.max_epochs=1000",
            f"trainer.max_steps={max_steps}", "callbacks.sample_text=null", "callbacks.loss_plot=null",
            "callbacks.export_weights=null", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
            "~logger", f"run_dir={work / name}"])


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


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((seconds for seconds, bpb in curve if bpb <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kjv.txt"))
    parser.add_argument("--budget", type=float, default=900.0, help="seconds of training for the book's recipe")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--speedrun-share", type=float, default=1 / 3,
                        help="the speedrun's schedule is planned to end after this share of the budget")
    parser.add_argument("--out", default=None, help="write OUT.png (curves) and OUT.md (table)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.budget, args.eval_every, args.eval_batches, args.vocab_size, args.max_steps = 3.0, 2, 2, 512, 6
    data = Path(args.data).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
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
    lines = [f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; corpus {data.name} "
             f"({data.stat().st_size / 1e6:.1f} MB); budget {args.budget:.0f} s of training; target: the book's "
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
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        plot(runs, target, out.with_suffix(".png"))


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
