"""Run a gptlit script with faults injected: `python tests/fault_runner.py FAULTS script.py [args ...]`.

FAULTS is a comma-separated list (possibly empty) of
  kill-at-step:N             SIGKILL right after optimizer step N and every hook of it (what step N saved is on
                             disk, nothing else is cleaned up)
  enospc:NAME[:K]            the K-th (default first) write of a file named NAME runs out of space half-way
  kill-during:NAME[:K]       SIGKILL half-way through the K-th write of NAME
The script then runs as `python script.py args ...` would run it (same sys.argv, sys.path and __main__).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    faults, script, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    # As `python script.py` would: the script's folder first on the path; then this checkout, so that its gptlit
    # is the one imported wherever the script lies.
    sys.path[0:1] = list(dict.fromkeys([str((ROOT / script).parent), str(ROOT)]))
    from tests.faults import WriteFaults

    writes = WriteFaults()
    for fault in filter(None, faults.split(",")):
        action, _, rest = fault.partition(":")
        if action == "kill-at-step":
            kill_at_step(int(rest))
            continue
        name, _, nth = rest.partition(":")
        writes.add(name, action, int(nth or 1))
    writes.install()
    sys.argv = [script, *args]
    runpy.run_path(str(ROOT / script), run_name="__main__")


def kill_at_step(step: int) -> None:
    from gptlit.training.module import GPTLitModule

    # The module's hook runs after every callback's on_train_batch_end, so a checkpoint taken at this step is
    # complete when the process dies.
    original = GPTLitModule.on_train_batch_end

    def on_train_batch_end(self, outputs, batch, batch_idx):
        original(self, outputs, batch, batch_idx)
        if self.global_step >= step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    GPTLitModule.on_train_batch_end = on_train_batch_end


if __name__ == "__main__":
    main()
