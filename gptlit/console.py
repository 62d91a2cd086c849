"""What a training run tells its user, kept in the run's log as well.

Lines are printed as before (``show``: on rank 0, above Lightning's progress bar) and each is also handed to
the ``gptlit.console`` logger. train.py's logging config (conf/hydra/job_logging/run.yaml) writes that logger
to the run's ``train.log`` and nowhere else, so a finished run can be read again. Used as a library without
that config, the logger has a null handler and does not propagate: nothing extra is printed or written.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger("gptlit.console")
# The lines were printed already; a logging set-up that prints the root logger must not print them again.
log.propagate = False
log.addHandler(logging.NullHandler())


def show(text: str, pl_module: L.LightningModule | None = None, stream: TextIO | None = None) -> None:
    """Print ``text`` for the user (through the module: rank 0 only, above the progress bar) and log it."""
    if pl_module is not None:
        if not pl_module.trainer.is_global_zero:
            return
        pl_module.print(text)
    else:
        tqdm.write(text, file=stream or sys.stdout)  # above a progress bar, should one be on screen
    log.info(text)


def copy_warnings_to_log() -> None:
    """Warnings still show as Python shows them; each also goes into the run's log."""
    if getattr(warnings.showwarning, "copies_to_log", False):
        return  # a multirun's next job: already in place
    show_warning = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        show_warning(message, category, filename, lineno, file, line)
        log.warning("%s: %s", category.__name__, message)

    showwarning.copies_to_log = True
    warnings.showwarning = showwarning


class ConsoleHandler(logging.StreamHandler):
    """A StreamHandler that writes above tqdm's progress bars, not onto the line of one."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class QuietLightning(logging.Filter):
    """Drop Lightning's start-up chatter that says nothing about this run: which accelerators exist (the run's
    own summary names the device and precision it uses), an advertisement for a logging service, and the note
    that it reads the train loader's length for a learning-rate schedule. Every other Lightning message, and
    every warning, passes."""

    NOISE = re.compile(
        r"(GPU|TPU|HPU) available: |💡 Tip: |LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: |Using .* Automatic Mixed Precision"
        r"|Loading `train_dataloader` to estimate number of stepping batches"
    )

    def filter(self, record: logging.LogRecord) -> bool:
        chatter = record.name.startswith("lightning") and record.levelno < logging.WARNING
        return not (chatter and self.NOISE.match(record.getMessage()))
