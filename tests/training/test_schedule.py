"""scheduler=cosine: the book's appendix-D warmup and cosine decay, logged as train/lr at every optimizer step."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from gptlit.cli.build import fit
from gptlit.errors import UserError
from gptlit.training.schedule import WarmupCosine

from ..conftest import compose_config, compose_train


def closed_form(s: int, warmup: int, total: int, initial: float, peak: float, minimum: float) -> float:
    """The issue's formula, in the book's order of operations (the increment and the progress are divided out
    first: another order differs in the last bit)."""
    if s < warmup:
        return initial + s * ((peak - initial) / warmup)
    progress = (s - warmup) / (total - warmup)
    return minimum + (peak - minimum) * 0.5 * (1 + math.cos(math.pi * progress))


def scheduled_rates(total: int, peak: float, **kwargs) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = WarmupCosine(optimizer, total_steps=total, **kwargs)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(
    ("total", "warmup", "initial", "minimum"), [(135, 27, 1e-5, 1e-5), (20, 0, 0.0, 0.0), (10, 9, 3e-5, 1e-6)]
)
def test_rates_are_the_closed_form_at_every_step(total, warmup, initial, minimum):
    rates = scheduled_rates(total, 1e-3, warmup_steps=warmup, initial_lr=initial, min_lr=minimum)
    assert rates == [closed_form(s, warmup, total, initial, 1e-3, minimum) for s in range(total)]


def test_warmup_fraction_rounds_down_like_the_book():
    # The book: warmup_steps = int(0.2 * total_steps); 135 steps give 27.
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    assert WarmupCosine(optimizer, total_steps=135, warmup_fraction=0.2).warmup_steps == 27
    assert WarmupCosine(optimizer, total_steps=9, warmup_fraction=0.2).warmup_steps == 1
    with pytest.raises(UserError, match="warmup_fraction"):
        WarmupCosine(optimizer, total_steps=9, warmup_fraction=1.5)


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def with_csv_logger(cfg, run_dir: Path):
    with open_dict(cfg):
        cfg.logger = compose_config("logger=csv", f"run_dir={run_dir}").logger
    return cfg


def test_train_logs_the_closed_form_rate_and_the_grad_norm_at_every_optimizer_step(tmp_path):
    # Two micro-batches per step: the rate moves once per optimizer step, not once per batch.
    steps, peak = 10, 2e-3
    cfg = with_csv_logger(compose_train(
        tmp_path, "scheduler=cosine", f"trainer.max_steps={steps}", "trainer.max_epochs=-1",
        "scheduler.warmup_fraction=0.2", "scheduler.initial_lr=1e-5", "scheduler.min_lr=2e-4",
        f"optimizer.lr={peak}", "trainer.tokens_per_step=128", "trainer.gradient_clip_val=1.0",
    ), tmp_path)
    fit(cfg)
    rows = [r for r in csv_rows(tmp_path) if r["train/lr"]]
    assert [int(r["step"]) for r in rows] == list(range(steps))
    # Logged as the nearest float32 (Apple GPUs have no float64); the optimizer itself steps at the exact rate.
    expected = [closed_form(s, 2, steps, 1e-5, peak, 2e-4) for s in range(steps)]
    assert [float(r["train/lr"]) for r in rows] == torch.tensor(expected, dtype=torch.float32).tolist()
    assert all(float(r["train/grad_norm"]) > 0 for r in rows)


def test_a_schedule_needs_the_length_of_the_run(tmp_path):
    cfg = compose_train(tmp_path, "scheduler=cosine", "trainer.max_epochs=-1", "trainer.max_steps=-1")
    with pytest.raises(UserError, match="length of the run"):
        fit(cfg)
