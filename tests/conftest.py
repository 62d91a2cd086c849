from __future__ import annotations

from pathlib import Path

import pytest
import torch

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


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
