"""The ready recipes, each run for 3 steps on a tiny model and local fixture data, so none of them can rot."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gptlit.cli.build import fit
from gptlit.training.schedule import WarmupCosine

from ..conftest import compose_config

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow


def stories(text: str, size: int = 800) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def tinystories_fixture(folder: Path, text: str) -> Path:
    # The hub dataset's layout: a train and a validation split, a `text` column.
    docs = stories(text)
    folder.mkdir()
    for name, part in (("train.jsonl", docs[:-4]), ("validation.jsonl", docs[-4:])):
        (folder / name).write_text("".join(json.dumps({"text": d}) + "\n" for d in part), encoding="utf-8")
    return folder


def gutenberg_fixture(folder: Path, text: str) -> Path:
    folder.mkdir()
    for i, book in enumerate(stories(text, 6000)):
        (folder / f"PG{i}_cleaned.txt").write_text(book, encoding="utf-8")
    return folder


def fineweb_fixture(folder: Path, text: str) -> Path:
    folder.mkdir()
    docs = stories(text, 1000)
    pq.write_table(pa.table({"text": docs, "id": [f"<urn:{i}>" for i in range(len(docs))]}), folder / "000.parquet")
    return folder / "000.parquet"


FIXTURES = {"tinystories": tinystories_fixture, "gutenberg": gutenberg_fixture, "gpt2_124m_fineweb": fineweb_fixture}
TINY = ["model.emb_dim=32", "model.n_heads=2", "model.n_layers=2", "data.context_length=32", "data.batch_size=2",
        "trainer.val_check_interval=3", "trainer.limit_val_batches=1", "trainer.accelerator=cpu", "trainer.devices=1",
        "+trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "trainer.enable_model_summary=false",
        "~logger", "callbacks.loss_plot=null", "sample.max_new_tokens=5"]
# Each recipe's own length setting, shrunk to 3 steps; the token recipes keep accumulating 2 micro-batches.
LENGTH = {
    "tinystories": ["trainer.tokens_per_step=128", "trainer.max_tokens=384", "scheduler.warmup_steps=1"],
    "gutenberg": ["trainer.max_steps=3"],
    "gpt2_124m_fineweb": ["trainer.tokens_per_step=128", "trainer.max_tokens=384", "scheduler.warmup_steps=1",
                          "data.val_size=200", "data.num_workers=0"],
}


@pytest.mark.parametrize("recipe", sorted(FIXTURES))
def test_recipe_runs_on_fixture_data(tmp_path, verdict_text, recipe):
    data = FIXTURES[recipe](tmp_path / "data", verdict_text)
    cfg = compose_config(
        f"experiment={recipe}", f"data.path={data}", f"data.cache_dir={tmp_path / 'cache'}", "data.progress=false",
        "data.tokenize_workers=1", *TINY, *LENGTH[recipe], f"run_dir={tmp_path / 'run'}",
    )
    trainer = fit(cfg)
    module = trainer.lightning_module
    assert trainer.global_step == 3 and [h["step"] for h in module.history] == [3]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    if recipe != "gutenberg":
        # Their recipe: warmup and cosine decay, clipping, a global batch of accumulated micro-batches.
        assert isinstance(trainer.lr_scheduler_configs[0].scheduler, WarmupCosine)
        assert trainer.gradient_clip_val == 1.0 and trainer.accumulate_grad_batches == 2
        decayed = [g for g in trainer.optimizers[0].param_groups if g["weight_decay"] > 0]
        assert len(decayed) == 1 and len(trainer.optimizers[0].param_groups) == 2
    if recipe == "tinystories":
        assert "val" in trainer.datamodule.token_paths  # the dataset's own validation split


@pytest.mark.parametrize("recipe", ["gpt2_124m_fineweb", "tinystories", "gutenberg"])
def test_long_recipes_write_last_checkpoint_every_half_hour(recipe):
    # An epoch of these runs lasts hours (FineWeb-Edu's is the whole run): last.ckpt only at epoch ends would lose
    # everything to a kill without a signal.
    cfg = compose_config("run_dir=unused", f"experiment={recipe}")
    assert cfg.callbacks.last_checkpoint.every_n_minutes == 30
