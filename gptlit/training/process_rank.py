"""Which process of a multi-process run this is, before the run's process group exists.

The launchers say it in environment variables, each in its own: Lightning's launcher sets LOCAL_RANK in the
processes it starts (its first process has none) and reads NODE_RANK for several machines; torchrun sets RANK,
LOCAL_RANK and GROUP_RANK; SLURM's ``srun`` sets SLURM_PROCID and SLURM_LOCALID but no LOCAL_RANK. Work that one
process does for the whole run before training starts (reading and tokenizing the corpus, recording decisions
in the run's config) asks ``started_as_global_zero``: under ``srun``, a check of LOCAL_RANK alone had every rank
tokenize the corpus.
"""

from __future__ import annotations

import os

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def started_as_global_zero() -> bool:
    """True in the process that becomes global rank 0 (and in a run of one process)."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)
