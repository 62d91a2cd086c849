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
               "gptlit.weights.io", "gptlit.weights.gpt2", "gptlit.weights.hf_export", "gptlit.weights.hf_llama",
               "gptlit.weights.hf_folder", "gptlit.files",
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


# What each part of gptlit may import from the others: the framework-free layers below, the CLI above everything.
# Nothing imports upward, so a folder can be read, tested and reused with only what is below it.
LAYERS = {
    "errors": set(),
    "files": {"errors"},
    "hub": set(),
    "console": set(),
    "core": {"errors"},
    "weights": {"core", "errors", "files", "hub"},
    "data": {"core", "errors", "files", "hub"},
    "evaluation": {"core", "errors", "files"},
    "planning": {"core", "errors", "files"},
    "serving": {"core", "weights", "errors", "files", "hub"},
    "training": {"core", "weights", "evaluation", "planning", "errors", "files", "console"},
    "book": {"training", "core", "errors", "console"},
    "cli": set(),  # the top: it may import anything (checked below as the exception)
}


def gptlit_imports(path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gptlit":
            names = [node.module] if node.module != "gptlit" else [f"gptlit.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "gptlit"]
        found |= {name.split(".")[1] for name in names if "." in name}
    return found


def test_nothing_imports_upward():
    package = ROOT / "gptlit"
    wrong = []
    for path in sorted(package.rglob("*.py")):
        part = path.relative_to(package).parts[0].removesuffix(".py")
        if part in ("__init__", "cli"):
            continue
        assert part in LAYERS, f"{part}: a new part of gptlit needs its place in LAYERS"
        wrong += [f"{path.relative_to(ROOT)} imports gptlit.{used}"
                  for used in gptlit_imports(path) - LAYERS[part] - {part}]
    assert not wrong, "\n".join(wrong)
    # Nothing below the CLI reaches up into it, and the entry scripts are only its callers.
    for script in ("train.py", "generate.py", "eval.py", "export.py", "plan.py", "tokenizer.py", "serve.py"):
        assert gptlit_imports(ROOT / script) == {"cli"}, script
