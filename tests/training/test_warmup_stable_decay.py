"""scheduler=wsd against its closed form, at every step, for every parameter group."""

from __future__ import annotations

import pytest
import torch

from gptlit.errors import UserError
from gptlit.training.warmup_stable_decay import WarmupStableDecay


def closed_form(step: int, peak: float, total: int, warmup: int, decay: int, initial: float, low: float) -> float:
    """Written as the phases, by hand: warmup, stable, decay; where a short run's warmup and decay overlap, the
    lower of the two ramps."""
    warm = initial + (peak - initial) * step / warmup if step < warmup else peak
    cool = low + (peak - low) * (total - step) / decay if step >= total - decay else peak
    return min(warm, cool)


@pytest.mark.parametrize("total, warmup, fraction, initial, low", [(100, 10, 0.4, 0.0, 0.0), (37, 0, 0.25, 0.0, 1e-5),
                                                                   (20, 5, 1.0 - 0.25, 1e-4, 0.0),
                                                                   (8, 6, 0.5, 0.0, 0.0)])  # warmup meets decay
def test_every_step_is_the_closed_form_for_every_group(total, warmup, fraction, initial, low):
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1], "lr": 0.02}, {"params": params[1:], "lr": 0.004}])
    scheduler = WarmupStableDecay(optimizer, total, warmup, fraction, initial, low)
    decay = int(fraction * total)
    for step in range(total):
        for group, peak in zip(optimizer.param_groups, (0.02, 0.004)):
            assert group["lr"] == pytest.approx(closed_form(step, peak, total, warmup, decay, initial, low), abs=1e-15)
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([low, low])  # the end of the decay


def test_bad_settings_are_refused_in_one_line():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(UserError, match="decay_fraction"):
        WarmupStableDecay(optimizer, 10, decay_fraction=1.5)
    with pytest.raises(UserError, match="warmup_steps"):
        WarmupStableDecay(optimizer, 10, warmup_steps=-1)
