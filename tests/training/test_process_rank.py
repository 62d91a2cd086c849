"""Work done once per run before training (tokenizing the corpus) happens in the process that becomes global
rank 0, whichever launcher started the processes."""

from __future__ import annotations

import pytest

from gptlit.cli.build import build
from gptlit.training.process_rank import RANK_VARIABLES, started_as_global_zero

from ..conftest import compose_config


@pytest.mark.parametrize("variables, zero", [
    ({}, True),  # one process, or the first of Lightning's launcher
    ({"LOCAL_RANK": "1"}, False),  # a process Lightning's launcher started
    ({"NODE_RANK": "1"}, False),  # the first process of a second machine
    ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True),  # torchrun's first
    ({"RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1"}, False),
    ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, True),  # srun's first
    ({"SLURM_PROCID": "2", "SLURM_LOCALID": "0"}, False),  # srun sets no LOCAL_RANK
])
def test_each_launchers_first_process_is_global_zero(monkeypatch, variables, zero):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert started_as_global_zero() is zero


def test_an_srun_rank_other_than_zero_leaves_the_corpus_to_rank_zero(monkeypatch, tmp_path, verdict_path):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(verdict_path.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    cache = tmp_path / "cache"
    common = (f"run_dir={tmp_path / 'run'}", "model=tiny", "data=textfiles", f"data.path={corpus}",
              f"data.cache_dir={cache}", "data.tokenize_workers=1", "data.context_length=32", "trainer.accelerator=cpu")
    monkeypatch.setenv("SLURM_PROCID", "1")
    datamodule, _, _ = build(compose_config(*common))
    assert not cache.exists() and datamodule.prepare_data_per_node is False
    monkeypatch.setenv("SLURM_PROCID", "0")
    build(compose_config(*common))
    assert len(list(cache.iterdir())) == 1
