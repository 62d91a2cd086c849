"""bench/hf_tokenize.py runs: its smoke mode tokenizes a tiny generated parquet corpus and prints its table."""

import subprocess
import sys

from .conftest import ROOT


def test_hf_tokenize_bench_runs_in_smoke_mode(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "hf_tokenize.py"), "--smoke", "--root", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 0.2 MB | 1 |")]
    assert len(rows) == 1, proc.stdout[-2000:]
