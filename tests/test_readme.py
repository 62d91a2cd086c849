"""README's quick commands, run as written, print what README says they print.

Every `$ command` line in README's code blocks runs in order (later commands use what earlier ones wrote) in
a scratch directory that holds the entry points, conf/ and The Verdict, so nothing is written into the
checkout. The lines under a command are compared with its output as a terminal shows it (progress bars left
out): a line "..." stands for any number of lines, and "..." inside a line for any text. Commands that take
minutes, download, or depend on the machine are listed in SKIP with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import ROOT, find_verdict, terminal_lines

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow

# Text in a command that keeps it from running here, and why.
SKIP = {
    "python train.py experiment=book_ch5": "GPT-2 124M for 10 epochs: minutes (tests/test_book_ch5.py checks it small)",
    "pretrained=gpt2": "downloads GPT-2 from the hub when online; offline its error depends on the cache",
    "init_from=gpt2 ": "downloads GPT-2 from the hub when online",
    "trainer.max_steps=12": "its output is a progress bar with timings",
    "ckpt_path=downloaded.ckpt": "needs a hostile file (tests/test_reliability.py makes one)",
    "data.path=notes.txt": "a missing data.path: its handling is changing (download of The Verdict)",
    "--cfg job --resolve": "the precision picked depends on the machine",
    "hydra.run.dir=/tmp/fd/run": "needs a 60 MB disk mounted at /tmp/fd (tests/test_faults.py fills a disk its own way)",
    "python plan.py": "its figures are this machine's measurements (tests/test_plan.py checks the plan)",
    "python bench/book_appendix_d.py": "the book's own run takes minutes (tests/test_book_appendix_d.py checks it small)",
    "outputs/default/": "reads the default 124M run's checkpoint (a run of minutes)",
    "hydra.run.dir=/tmp/ctrlc": "the default 124M run stopped by Ctrl-C (tests/test_resume.py sends real signals)",
}
GPU_ONLY = ("trainer=gpu", "device=cuda")  # these run for real on a machine with a GPU


def is_whole_default_run(command: str) -> bool:
    return command.strip() == "python train.py"


def readme_commands() -> list[tuple[str, list[str]]]:
    """(command, the lines README shows under it) for every `$ ` line inside a code block; a command whose
    quotes are still open takes in the following lines."""
    commands, current = [], None
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            current = None  # a block's end ends its last command's output
        elif line.startswith("$ "):
            current = [line[2:], []]
            commands.append(current)
        elif current and not complete(current[0]):
            current[0] += "\n" + line
        elif current:
            current[1].append(line)
    return [(command, shown) for command, shown in commands]


def complete(command: str) -> bool:
    try:
        shlex.split(command)
        return True
    except ValueError:  # "No closing quotation"
        return False


def line_pattern(expected: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in expected.rstrip().split("...")) + r"\Z")


def matches(expected: list[str], actual: list[str]) -> bool:
    if not expected:
        return not actual
    if expected[0].strip() == "...":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and bool(line_pattern(expected[0]).match(actual[0])) and matches(expected[1:], actual[1:])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A working directory like the checkout's root, minus everything a command could write into."""
    root = tmp_path_factory.mktemp("readme")
    for name in ("train.py", "generate.py", "eval.py", "export.py", "plan.py", "conf", "bench"):
        (root / name).symlink_to(ROOT / name)
    (root / "data").mkdir()
    (root / "data" / "the-verdict.txt").symlink_to(find_verdict())
    return root


def run(command: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",  # stdout and stderr interleaved as on a terminal
        "HF_HOME": str(cwd / "hf-home"),  # an empty Hugging Face cache, whatever this machine holds
        "COLUMNS": "120",  # the terminal width `ls -C` lays out for (unset it would take 80)
    }
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, timeout=600)
    return result.stdout


# The precision probe's report: printed by the first run of a shape on a machine (later runs read its cache), with
# the machine's own figures. README shows it where it explains the probe.
PROBE_REPORT = re.compile(r"precision \S+: on .* the step's matmuls ran ")


def test_readme_commands_print_what_readme_shows(scratch):
    demo = str(scratch / "demo")  # README's /tmp/demo, kept inside the scratch directory
    has_gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    checked, mismatches = 0, []
    for command, shown in readme_commands():
        if is_whole_default_run(command) or any(text in command for text in SKIP):
            continue
        if has_gpu and any(text in command for text in GPU_ONLY):
            continue
        command = command.replace("/tmp/demo", demo)
        # README shows some progress bars as a terminal ends them; like the output's, they are not compared.
        expected = [line.replace("/tmp/demo", demo) for line in terminal_lines("\n".join(shown))]
        actual = [line for line in terminal_lines(run(command, scratch)) if not PROBE_REPORT.match(line)]
        checked += 1
        if not matches(expected, actual):
            mismatches.append(f"$ {command}\nREADME shows:\n" + "\n".join(expected) + "\nit printed:\n" +
                              "\n".join(actual))
    assert not mismatches, "\n\n".join(mismatches)
    assert checked >= 20
