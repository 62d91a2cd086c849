"""trainer.compile=true: training and evaluation steps run through torch.compile (inductor), with eager's losses,
eager's checkpoint keys and an eager text sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch._dynamo.utils import counters

from gptlit.cli.build import build, fit
from gptlit.errors import UserError, find_user_error
from gptlit.training.callbacks.sample_text import SampleText
from gptlit.training.compile import CompiledForward
from gptlit.training.trainer import Trainer
from gptlit.weights.io import model_from_checkpoint, read_checkpoint

from ..conftest import compose_config, find_verdict

STEPS, EVAL_EVERY, EVAL_BATCHES = 4, 2, 2


def short_run(run_dir: Path, compile: str):
    """One epoch of 4 steps of the tiny model, evaluated after steps 2 and 4, a text sample at the epoch's end.
    Without dropout: inductor may draw its own masks where eager draws torch's, and only the arithmetic is
    compared here."""
    return compose_config(
        "model=tiny", "model.drop_rate=0.0", "data.context_length=32", f"data.path={find_verdict()}",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true", "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={STEPS}", f"trainer.val_check_interval={EVAL_EVERY}",
        f"trainer.limit_val_batches={EVAL_BATCHES}", "+trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
        "~logger", "callbacks.loss_plot=null", "callbacks.throughput.peak_flops=1e12", "sample.max_new_tokens=5",
        f"trainer.compile={compile}", f"run_dir={run_dir}",
    )


@dataclass
class Run:
    trainer: Trainer
    run_dir: Path
    calls: dict[str, int]  # the compiled forward's calls, by the model's mode
    counters: dict[str, dict[str, int]]  # dynamo's and inductor's, after the run
    samples: list[tuple[str, int]]  # each text sample, with the frames dynamo compiled while it was generated


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """The same short run, eager and compiled."""
    made = {}
    for name in ("eager", "compiled"):
        calls, samples = {"train": 0, "eval": 0}, []
        call, sample = CompiledForward.__call__, SampleText.sample

        def counted_call(self, idx, calls=calls, call=call):
            calls["train" if self.model.training else "eval"] += 1
            return call(self, idx)

        def watched_sample(self, model, samples=samples, sample=sample):
            before = counters["frames"]["total"]
            text = sample(self, model)
            samples.append((text, counters["frames"]["total"] - before))
            return text

        run_dir = tmp_path_factory.mktemp(name)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(CompiledForward, "__call__", counted_call)
            patch.setattr(SampleText, "sample", watched_sample)
            torch._dynamo.reset()  # compiled here, not found in what an earlier test compiled
            counters.clear()
            trainer = fit(short_run(run_dir, "true" if name == "compiled" else "false"))
        made[name] = Run(trainer, run_dir, calls, {key: dict(value) for key, value in counters.items()}, samples)
    return made


@pytest.mark.slow
def test_compiled_steps_give_eager_losses(runs):
    eager, compiled = runs["eager"], runs["compiled"]
    # Every training and validation forward of the compiled run went through the compiled callable (two loaders,
    # EVAL_BATCHES each, at every evaluation), none of the eager run's.
    assert compiled.calls == {"train": STEPS, "eval": STEPS // EVAL_EVERY * 2 * EVAL_BATCHES}
    assert eager.calls == {"train": 0, "eval": 0} and not eager.counters.get("frames")
    # Dynamo captured a graph for each mode and inductor made their code (it counts only what it compiles or finds
    # in its cache): not another backend, not a silent fallback to eager.
    assert compiled.counters["stats"]["unique_graphs"] >= 2 and compiled.counters["frames"]["ok"] >= 2
    assert compiled.counters.get("inductor"), compiled.counters
    mine, theirs = compiled.trainer.lightning_module.history, eager.trainer.lightning_module.history
    assert [h["step"] for h in mine] == [h["step"] for h in theirs] == [2, 4]
    for ours, reference in zip(mine, theirs):
        # Inductor fuses float32 operations and sums in another order (layer norms, softmax, the loss): on an AVX2
        # CPU the losses differed by 5e-8 of their value after 4 AdamW steps. 1e-5 leaves room for other vector
        # widths and stays far below what two steps of training change (5e-3 between the evaluations here), which
        # a graph computing with stale weights would show.
        assert ours["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-5)
        assert ours["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_checkpoints_and_exports_keep_eager_keys(runs):
    eager, compiled = runs["eager"], runs["compiled"]
    keys = [list(read_checkpoint(run.run_dir / "checkpoints" / "last.ckpt")["state_dict"]) for run in (eager, compiled)]
    assert keys[1] == keys[0] == list(compiled.trainer.lightning_module.state_dict())
    assert not any("_orig_mod" in key for key in keys[1])
    exported = []
    for run in (eager, compiled):
        with safe_open(run.run_dir / "model.safetensors", "pt") as f:
            exported.append(sorted(f.keys()))
    assert exported[1] == exported[0]
    # The compiled run's checkpoint is an ordinary one: an eager model loads it and computes what training left.
    model = model_from_checkpoint(compiled.run_dir / "checkpoints" / "last.ckpt").eval()
    trained = compiled.trainer.lightning_module.model
    idx = torch.arange(32).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(model(idx), trained.eval()(idx))


@pytest.mark.slow
def test_text_sample_after_an_epoch_is_generated_eagerly(runs):
    eager, compiled = runs["eager"], runs["compiled"]
    assert len(compiled.samples) == 1
    text, frames_compiled = compiled.samples[0]
    assert text.startswith("Every effort moves you") and len(text) > len("Every effort moves you")
    # Generation (the KV-cache path) never reached dynamo: it ran on the eager model.
    assert frames_compiled == 0
    # Without dropout the compiled run trained the eager run's weights (to the losses' tolerance), so greedy
    # decoding of 5 tokens agrees too.
    assert text == eager.samples[0][0]


def test_bad_compile_value_is_one_line(tmp_path):
    with pytest.raises(Exception) as caught:
        build(short_run(tmp_path, "maybe"))
    error = find_user_error(caught.value)
    assert isinstance(error, UserError)
    assert str(error) == ("trainer.compile must be true or false, got 'maybe'; set trainer.compile=true or "
                          "trainer.compile=false")
    with pytest.raises(UserError, match="trainer.compile must be true or false, got 1"):
        Trainer(compile=1, logger=False)


@pytest.mark.slow
def test_compiled_under_fsdp_on_two_processes_gives_ddps_eager_losses(tmp_path, verdict_path):
    # The compiled forward is built after the model was sharded; FSDP's per-block gathers run between the
    # compiler's graphs. Two ranks, dropout off (compiled dropout draws its own masks).
    from .test_distributed import eval_losses, final_weights, max_weight_diff, run_train

    eager, _ = run_train(tmp_path / "ddp", verdict_path, "trainer=ddp", "trainer.devices=2")
    compiled, _ = run_train(tmp_path / "fsdp", verdict_path, "trainer=fsdp", "trainer.devices=2", "trainer.compile=true")
    torch.testing.assert_close(eval_losses(compiled), eval_losses(eager), rtol=0, atol=1e-5)
    assert max_weight_diff(final_weights(compiled), final_weights(eager)) < 1e-4
