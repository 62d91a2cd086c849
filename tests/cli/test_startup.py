import pytest
"""Start-up does its heavy work once: a corpus is hashed once, a resume checkpoint is read whole once."""

import torch

from gptlit.cli.build import fit
from gptlit.data import token_cache

from ..conftest import compose_config, compose_train

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow


def test_a_textfiles_corpus_is_hashed_once(tmp_path, verdict_text, monkeypatch):
    corpus = tmp_path / "books"
    corpus.mkdir()
    half = len(verdict_text) // 2
    (corpus / "a.txt").write_text(verdict_text[:half], encoding="utf-8")
    (corpus / "b.txt").write_text(verdict_text[half:], encoding="utf-8")
    hashed = []
    digest = token_cache.file_digest
    monkeypatch.setattr(token_cache, "file_digest", lambda path: hashed.append(path.name) or digest(path))
    fit(compose_config("model=tiny", "data=textfiles", f"data.path={corpus}", "data.context_length=32",
                       f"data.cache_dir={tmp_path / 'cache'}", "data.tokenize_workers=1", "data.progress=false",
                       "trainer.accelerator=cpu", "trainer.max_steps=1", "trainer.limit_val_batches=0", "~logger",
                       "callbacks.progress_bar=null", "callbacks.sample_text=null", "callbacks.loss_plot=null",
                       "callbacks.export_weights=null", f"run_dir={tmp_path / 'run'}"))
    assert sorted(hashed) == ["a.txt", "b.txt"]


def test_a_resume_checkpoint_is_read_whole_once(tmp_path, monkeypatch):
    common = ["trainer.limit_val_batches=0", "callbacks.export_weights=null"]
    fit(compose_train(tmp_path / "first", "trainer.max_steps=2", *common))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    whole_reads = []
    load = torch.load

    def spy(f, *args, **kwargs):
        if str(f) == str(ckpt) and not kwargs.get("mmap"):
            whole_reads.append(f)
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    trainer = fit(compose_train(tmp_path / "second", "trainer.max_steps=3", f"ckpt_path={ckpt}", *common))
    assert trainer.global_step == 3
    assert len(whole_reads) == 1  # Lightning's; the shape check before it maps the file without reading it
