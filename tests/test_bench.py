"""Every benchmark runs, in its smoke mode (a tiny model, a step or two), so none can rot unseen."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT, find_verdict

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow

# A line of each script's table, printed at full size and in smoke mode alike.
TABLE_LINES = {
    "book_ch5.py": "Training completed in",
    "book_appendix_d.py": "Training completed in",
    "compile_speed.py": "compiled / eager:",
    "data_pipeline.py": "| corpus | files | tokens | tokenize |",
    "families_throughput.py": "| model | family | parameters | GFLOP/token |",
    "generation.py": "gptlit fp32 tokens identical to the book's: True",
    "profile_step.py": "total (operator self time)",
    "train_throughput.py": "Lightning step vs plain loop:",
    "hf_tokenize.py": "| 0.2 MB | 1 |",
    "serve_throughput.py": "| clients | requests | tokens |",
    "tokenize_speed.py": "trained / GPT-2, batched:",
    "time_to_loss.py": "| run | evaluations | training s | best val bpb |",
}


def test_every_benchmark_has_a_smoke_check():
    assert sorted(p.name for p in (ROOT / "bench").glob("*.py")) == sorted(TABLE_LINES)


@pytest.mark.parametrize("script", sorted(TABLE_LINES))
def test_benchmark_runs_in_smoke_mode(script, tmp_path):
    # What each reads: The Verdict, nothing (generation), or a parquet corpus it writes under --root (hf_tokenize).
    data = {"generation.py": [], "hf_tokenize.py": ["--root", str(tmp_path)]}.get(script, ["--data", str(find_verdict())])
    # One thread each: on a machine shared with other jobs, torch's thread pools waiting for one another slow a
    # smoke run tenfold.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, f"bench/{script}", "--smoke", *data], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert TABLE_LINES[script] in proc.stdout, proc.stdout[-3000:]
