"""data=hf: local parquet and jsonl files, written here, into the shared token cache; nothing downloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gptlit.cli.build import fit
from gptlit.core.tokenizer import ENDOFTEXT_ID, encode
from gptlit.data.hf import HFDataModule
from gptlit.data.token_cache import TokenFile
from gptlit.errors import UserError

from ..conftest import ROOT, compose_config

CONTEXT = 16


def documents(text: str, size: int = 1200) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def joined_tokens(docs: list[str]) -> list[int]:
    ids: list[int] = []
    for i, doc in enumerate(docs):
        ids += ([ENDOFTEXT_ID] if i else []) + encode(doc)
    return ids


def write_parquet(path: Path, docs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs, "id": list(range(len(docs)))}), path)
    return path


def write_jsonl(path: Path, docs: list[str], column: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({column: d}) + "\n" for d in docs), encoding="utf-8")
    return path


def datamodule(path, cache_dir, **kwargs) -> HFDataModule:
    dm = HFDataModule(path=str(path), cache_dir=str(cache_dir), context_length=CONTEXT, batch_size=2,
                      tokenize_workers=2, progress=False, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_a_local_file_is_tokenized_into_the_textfiles_cache_format(tmp_path, verdict_text, kind):
    # The jsonl corpus has 1280 short documents: more batches than the 2 workers' start-up is worth, so they
    # tokenize it; the parquet one is tokenized in this process.
    docs = documents(verdict_text, 16 if kind == "jsonl" else 1200)
    path = (write_parquet if kind == "parquet" else write_jsonl)(tmp_path / f"corpus.{kind}", docs)
    dm = datamodule(path, tmp_path / "cache")
    expected = joined_tokens(docs)
    assert TokenFile(dm.token_paths["train"])[:].tolist() == expected
    assert isinstance(dm.train_set.tokens, TokenFile) and isinstance(dm.val_set.tokens, TokenFile)


def test_held_out_validation_never_shares_a_token_with_training(tmp_path, verdict_text):
    docs = documents(verdict_text)
    dm = datamodule(write_parquet(tmp_path / "c.parquet", docs), tmp_path / "cache", val_size=0.1)
    total = len(joined_tokens(docs))
    train, val = dm.train_set.tokens, dm.val_set.tokens
    assert (train.start, train.stop, val.start, val.stop) == (0, int(0.9 * total), int(0.9 * total), total)
    # Every token a training window reads (inputs and shifted targets) lies before the split point.
    last = (len(dm.train_set) - 1) * dm.train_set.stride + CONTEXT + 1
    assert last <= train.stop
    # A number of tokens works as well as a fraction.
    dm = datamodule(write_parquet(tmp_path / "c.parquet", docs), tmp_path / "cache", val_size=500)
    assert len(dm.val_set.tokens) == 500 and dm.train_set.tokens.stop == total - 500


def test_the_datasets_own_validation_split_is_used_when_it_has_one(tmp_path, verdict_text):
    docs = documents(verdict_text)
    folder = tmp_path / "corpus"
    write_parquet(folder / "train.parquet", docs[:-3])
    write_parquet(folder / "validation.parquet", docs[-3:])
    dm = datamodule(folder, tmp_path / "cache")
    assert TokenFile(dm.token_paths["train"])[:].tolist() == joined_tokens(docs[:-3])
    assert TokenFile(dm.token_paths["val"])[:].tolist() == joined_tokens(docs[-3:])
    assert len(dm.val_set.tokens) == len(joined_tokens(docs[-3:]))


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, verdict_text, monkeypatch):
    docs = documents(verdict_text)
    path = write_jsonl(tmp_path / "c.jsonl", docs)
    first = datamodule(path, tmp_path / "cache").token_paths["train"]
    written = first.stat().st_mtime_ns

    def no_tokenizing(*args):
        raise AssertionError("tokenized again")

    with monkeypatch.context() as patch:
        patch.setattr(HFDataModule, "tokenize", no_tokenizing)
        assert datamodule(path, tmp_path / "cache").token_paths["train"] == first
    assert first.stat().st_mtime_ns == written
    docs[2] = docs[2].replace("the", "THE", 1)
    write_jsonl(path, docs)
    changed = datamodule(path, tmp_path / "cache").token_paths["train"]
    assert changed != first and TokenFile(changed)[:].tolist() == joined_tokens(docs)


def test_bad_paths_and_columns_are_one_line_errors(tmp_path, verdict_text):
    with pytest.raises(UserError, match="matches no files"):
        datamodule(tmp_path / "nothing" / "*.parquet", tmp_path / "cache")
    path = write_jsonl(tmp_path / "c.jsonl", documents(verdict_text), column="story")
    with pytest.raises(UserError, match="'text' is not a column .* its columns: story"):
        datamodule(path, tmp_path / "cache")
    assert datamodule(path, tmp_path / "cache", text_column="story").train_set is not None
    with pytest.raises(UserError, match="val_size"):
        datamodule(path, tmp_path / "cache", val_size=1.5)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"]


def hf_run(tmp_path: Path, path: Path) -> list[str]:
    """compose_train's quick CPU run, on data=hf (whose keys have no data.url)."""
    return ["model=tiny", "data=hf", f"data.path={path}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.context_length=32", "data.tokenize_workers=1", "data.progress=false", "trainer.accelerator=cpu",
            "trainer.devices=1", "+trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
            "trainer.enable_model_summary=false", "~logger", "callbacks.loss_plot=null", "callbacks.sample_text=null",
            f"run_dir={tmp_path / 'run'}"]


def test_train_runs_on_local_parquet(tmp_path, verdict_text):
    path = write_parquet(tmp_path / "c.parquet", documents(verdict_text))
    cfg = compose_config(*hf_run(tmp_path, path), "trainer.max_steps=3", "trainer.limit_val_batches=1",
                         "trainer.val_check_interval=3")
    trainer = fit(cfg)
    assert trainer.global_step == 3 and trainer.lightning_module.history[-1]["step"] == 3


def test_an_unreachable_hub_name_is_one_line_that_points_at_local_files(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "model=tiny", "data=hf", "data.path=roneneldan/TinyStories",
         f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: data.path roneneldan/TinyStories is not a local file or folder")
    assert "point data.path at local files" in lines[-1] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_unreachable_hub_is_one_line_without_retries(tmp_path):
    # A hub that cannot be reached (.invalid never resolves): the clients' retry lines, printed twice each over half
    # a minute, give way to offline mode and gptlit's one line.
    env = {**os.environ, "HF_ENDPOINT": "https://hub.invalid", "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "train.py", "model=tiny", "data=hf", "data.path=someone/corpus",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: data.path someone/corpus is not a local file or folder, and the Hugging "
                                 "Face hub could not give it") and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "run").exists()
