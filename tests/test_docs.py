"""The commands that README.md and docs/*.md show, run as written, print what the pages say they print.

Every `$ command` line in a page's code blocks is one test, with the id `page:n` (the page's n-th command). The
commands of one page run in order in that page's own scratch directory, which holds the entry points, conf/,
bench/ and The Verdict, so later commands find what earlier ones wrote and nothing is written into the checkout.
A command run alone (`-k "training.md:5"`) first runs the page's earlier commands, unchecked, so that it finds
their files. The lines under a command are compared with its output as a terminal shows it (progress bars left
out): a line "..." stands for any number of lines, and "..." inside a line for any text. Commands that take
minutes, download, or depend on the machine are in SKIP with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from .conftest import ROOT, find_verdict, terminal_lines

# Each command runs for seconds to a minute; the whole file takes minutes.
pytestmark = pytest.mark.slow

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Text in a command that keeps it from running here, and why.
SKIP = {
    "python train.py experiment=book_ch5": "GPT-2 124M for 10 epochs: minutes (tests/book/test_book_ch5.py checks it small)",
    "pretrained=gpt2": "downloads GPT-2 from the hub when online; offline its error depends on the cache",
    "init_from=gpt2 ": "downloads GPT-2 from the hub when online",
    "ckpt_path=downloaded.ckpt": "needs a hostile file (tests/reliability/test_reliability.py makes one)",
    "data.path=notes.txt": "a missing data.path: its handling is changing (download of The Verdict)",
    "hydra.run.dir=/tmp/fd/run": "needs a 60 MB disk mounted at /tmp/fd (tests/reliability/test_faults.py fills a disk its own way)",
    "python bench/book_appendix_d.py": "the book's own run takes minutes (tests/book/test_book_appendix_d.py checks it small)",
    "hydra.run.dir=/tmp/ctrlc": "the default 124M run stopped by Ctrl-C (tests/training/test_resume.py sends real signals)",
    "outputs/default/": "reads the default 124M run's checkpoint (a run of minutes)",
    "outputs/DATE/TIME/": "the GPT-2 124M model trained on The Verdict for serving.md (a run of minutes)",
    "(while another server holds 8000)": "needs a server holding port 8000 (tests/serving/test_serve.py holds one)",
    "curl -s": "talks to a server that runs until stopped (tests/serving/test_serve.py starts one and uses real clients)",
}
GPU_ONLY = ("trainer=gpu", "device=cuda")  # these run for real on a machine with a GPU


def is_whole_default_run(command: str) -> bool:
    return command.strip() == "python train.py"


@dataclass
class Command:
    page: Path
    number: int  # 1-based, within the page
    text: str
    shown: list[str]  # the lines the page shows under it

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.number}"

    def skip_reason(self) -> str | None:
        if is_whole_default_run(self.text):
            return "the default GPT-2 124M run: minutes"
        for text, reason in SKIP.items():
            if text in self.text:
                return reason
        if (torch.cuda.is_available() or torch.backends.mps.is_available()) and any(
                text in self.text for text in GPU_ONLY):
            return "its error is for a machine without a GPU, and this one has one"
        return None


def page_commands(page: Path) -> list[Command]:
    """Every `$ ` line inside a code block, with the lines shown under it; a command whose quotes are still
    open takes in the following lines."""
    commands, current = [], None
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            current = None  # a block's end ends its last command's output
        elif line.startswith("$ "):
            current = Command(page, len(commands) + 1, line[2:], [])
            commands.append(current)
        elif current and not complete(current.text):
            current.text += "\n" + line
        elif current:
            current.shown.append(line)
    return commands


def complete(command: str) -> bool:
    try:
        shlex.split(command)
        return True
    except ValueError:  # "No closing quotation"
        return False


COMMANDS = [command for page in PAGES for command in page_commands(page)]


def line_pattern(expected: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in expected.rstrip().split("...")) + r"\Z")


def matches(expected: list[str], actual: list[str]) -> bool:
    if not expected:
        return not actual
    if expected[0].strip() == "...":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and bool(line_pattern(expected[0]).match(actual[0])) and matches(expected[1:], actual[1:])


class Page:
    """One page's scratch directory: a working directory like the checkout's root, minus everything a command
    could write into, and which of the page's commands already ran there."""

    def __init__(self, root: Path):
        self.root = root
        for name in ("train.py", "generate.py", "eval.py", "export.py", "plan.py", "tokenizer.py", "serve.py", "conf",
                     "bench"):
            (root / name).symlink_to(ROOT / name)
        (root / "data").mkdir()
        (root / "data" / "the-verdict.txt").symlink_to(find_verdict())
        self.ran: set[int] = set()

    def run(self, command: Command) -> str:
        self.ran.add(command.number)
        return run(localize(command.text, self.root), self.root)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """page name -> its Page, made when the page's first command runs, kept for the module's later tests."""
    pages: dict[str, Page] = {}

    def get(page: Path) -> Page:
        if page.name not in pages:
            pages[page.name] = Page(tmp_path_factory.mktemp(page.stem))
        return pages[page.name]

    return get


def localize(text: str, root: Path) -> str:
    # The pages' /tmp/demo is kept inside the page's scratch directory.
    return text.replace("/tmp/demo", str(root / "demo"))


def run(command: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        # `python -c "import gptlit..."` imports this checkout's package, whatever the environment installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",  # stdout and stderr interleaved as on a terminal
        "HF_HOME": str(cwd / "hf-home"),  # an empty Hugging Face cache, whatever this machine holds
        "COLUMNS": "120",  # the terminal width `ls -C` lays out for (unset it would take 80)
    }
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, timeout=600)
    return result.stdout


# The precision probe's report: printed by the first run of a shape on a machine (later runs read its cache), with
# the machine's own figures. docs/performance.md shows it where it explains the probe.
PROBE_REPORT = re.compile(r"precision \S+: on .* the step's matmuls ran ")


@pytest.mark.parametrize("command", COMMANDS, ids=[command.id for command in COMMANDS])
def test_command_prints_what_the_page_shows(command: Command, scratch):
    reason = command.skip_reason()
    if reason:
        pytest.skip(reason)
    page = scratch(command.page)
    for earlier in COMMANDS:  # run alone, the command still finds what the page's earlier commands wrote
        if earlier.page == command.page and earlier.number < command.number and earlier.number not in page.ran \
                and not earlier.skip_reason():
            page.run(earlier)
    # Some pages show a progress bar as a terminal ends it; like the output's, it is not compared.
    expected = [localize(line, page.root) for line in terminal_lines("\n".join(command.shown))]
    actual = [line for line in terminal_lines(page.run(command)) if not PROBE_REPORT.match(line)]
    assert matches(expected, actual), (f"$ {command.text}\n{command.page.name} shows:\n" + "\n".join(expected) +
                                       "\nit printed:\n" + "\n".join(actual))


def test_enough_commands_run():
    # The pages keep enough runnable commands that this file checks the user's path end to end, not only the
    # commands that SKIP leaves in.
    runnable = [command.id for command in COMMANDS if not command.skip_reason()]
    assert len(runnable) >= 20, runnable
