"""The layers stay apart: the inference path (model, generation, tokenizer, weights) needs no training framework."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT

FRAMEWORKS = ("lightning", "pytorch_lightning", "lightning_fabric", "hydra", "omegaconf")


def imported_frameworks(*modules: str) -> set[str]:
    # A fresh interpreter: this test process has imported everything already.
    code = (
        f"import sys\nfor m in {list(modules)!r}: __import__(m)\n"
        f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_inference_path_imports_no_framework():
    modules = ["gptlit.core.model", "gptlit.core.generation", "gptlit.core.tokenizer", "gptlit.core.device",
               "gptlit.weights.io", "gptlit.weights.gpt2", "gptlit.weights.hf_export", "gptlit.files",
               "gptlit.evaluation.perplexity", "gptlit.evaluation.hellaswag", "gptlit.evaluation.splits"]
    assert imported_frameworks(*modules) == set()


def test_importing_gptlit_changes_no_process_state():
    # No umask change, no warning filters added, merely by importing the library.
    # The libraries gptlit builds on add filters of their own when imported; they are imported first.
    code = (
        "import os, warnings, torch, lightning, numpy, tqdm, tiktoken, safetensors, matplotlib.figure\n"
        "before = list(warnings.filters)\nos.umask(0o027)\n"
        "import gptlit.files, gptlit.data.text, gptlit.data.textfiles, gptlit.training.module, gptlit.cli.build\n"
        "assert os.umask(0o022) == 0o027\nassert warnings.filters == before, warnings.filters[:3]\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
