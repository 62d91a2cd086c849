from __future__ import annotations

import os
import re
from pathlib import Path

from hydra import compose, initialize_config_dir

import pytest
import torch

from gptlit.planning.precision import CHOSEN_ENV


ROOT = Path(__file__).resolve().parents[1]


def find_verdict() -> Path:
    for candidate in (ROOT / "data" / "the-verdict.txt", ROOT.parent / "shared" / "data" / "the-verdict.txt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("The Verdict is missing: copy it to data/the-verdict.txt (see README)")


@pytest.fixture(scope="session")
def verdict_path() -> Path:
    return find_verdict()


@pytest.fixture(scope="session")
def verdict_text(verdict_path) -> str:
    return verdict_path.read_text(encoding="utf-8")


# The book's config keys at a size small enough for tests.
TINY_CFG = {
    "vocab_size": 50257,
    "context_length": 64,
    "emb_dim": 32,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.1,
    "qkv_bias": False,
}


@pytest.fixture
def tiny_cfg() -> dict:
    return dict(TINY_CFG)


def pytest_collection_modifyitems(config, items):
    # Tests of the CUDA paths run where a GPU is, and say why they did not elsewhere.
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_inherited_precision():
    # A run built in this process hands its measured precision to the ranks it starts through the environment
    # (gptlit.planning.precision); one test's choice must not become the next test's.
    os.environ.pop(CHOSEN_ENV, None)
    yield
    os.environ.pop(CHOSEN_ENV, None)


def compose_config(*overrides: str, config: str = "train"):
    """A config of conf/ composed as the entry points compose it, with the given overrides."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config, overrides=list(overrides))


def run_export(out_dir, *overrides: str):
    """export.py's work in this process, on conf/export.yaml with the overrides; a one-line error it would print is
    raised as the UserError itself."""
    from gptlit.cli import export as export_py
    from gptlit.errors import find_user_error

    cfg = compose_config(f"out_dir={out_dir}", *overrides, config="export")
    try:
        return export_py.run(cfg)
    except Exception as err:
        raise find_user_error(err) or err


def compose_run(*overrides: str, run_dir="unused"):
    """conf/train.yaml exactly as train.py composes it (its defaults: the book's run), with the overrides."""
    return compose_config(f"run_dir={run_dir}", *overrides)


def compose_train(run_dir: Path, *overrides: str):
    """conf/train.yaml composed for a small, quick CPU run writing to run_dir; overrides come last."""
    base = [
        "model=tiny",
        "data.context_length=32",
        f"data.path={find_verdict()}",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        # Pinned: the default is measured per machine (gptlit/planning/precision.py), and tests must not
        # change numerics with the machine they run on.
        "trainer.precision=32-true",
        "+trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "~logger",
        "callbacks.loss_plot=null",
        "callbacks.sample_text=null",
        f"run_dir={run_dir}",
    ]
    return compose_config(*base, *overrides)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One short train.py run of the tiny model (3 steps, one evaluation) for every test that needs a run's files:
    (run directory, trained model). Its checkpoints, exports and .hydra/config.yaml are read, never changed: a test
    that damages or rewrites a file copies it first."""
    from gptlit.cli.build import fit
    from omegaconf import OmegaConf

    run_dir = tmp_path_factory.mktemp("tiny-run")
    cfg = compose_train(run_dir, "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1")
    trainer = fit(cfg)
    (run_dir / ".hydra").mkdir()  # what train.py's Hydra writes beside the checkpoints
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return run_dir, trainer.lightning_module.model


@pytest.fixture
def train_cfg(tmp_path):
    return lambda *overrides, run_dir=None: compose_train(run_dir or tmp_path, *overrides)


# A tqdm bar: "Epoch 0:  56%|█████▌    | 5/9 [00:28<00:23, ...", "Training: |          | 0/? [00:00<?, ...".
PROGRESS_BAR = re.compile(r"[^|]*: *(\d+%)?\|.*\| *\S+/\S+ \[")


# What a terminal does not show: the colour and style codes some tools write even when their output is not a
# terminal (wandb's closing lines), and control characters (a random model's sample can hold token 31, "\x1f").
INVISIBLE = re.compile(r"\x1b\[[0-9;]*m|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")


def terminal_lines(output: str) -> list[str]:
    """What a terminal keeps: each piece between carriage returns and newlines, as shown (without colour codes),
    without progress bars."""
    pieces = (piece.rstrip() for piece in re.split(r"[\r\n]", INVISIBLE.sub("", output)))
    return [piece for piece in pieces if piece.strip() and not PROGRESS_BAR.match(piece.strip())]


# transformers' GPT-2 at the tests' tiny size.
HF_TINY = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=50257)


def tiny_hf_gpt2(folder: Path, tied: bool = True):
    """A random tiny transformers GPT-2 saved to ``folder`` as the hub's GPT-2 repositories store it, its biases
    drawn too (random init leaves them at zero, which would hide a misplaced bias, the c_attn split's above all)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**HF_TINY, tie_word_embeddings=tied)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    model.save_pretrained(folder)
    return model
