"""No float64 tensor comes out of gptlit's training, evaluation or generation: Apple GPUs (MPS) have no float64,
and a run there would crash at the first such tensor. Checked on CPU, where every op can be watched."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gptlit.core.families import build_model
from gptlit.core.generation import DecodingConfig, generate
from gptlit.core.tokenizer import load_tokenizer
from gptlit.evaluation.perplexity import perplexity
from tests.conftest import compose_train


class NoFloat64(TorchDispatchMode):
    """Raises on any op whose output is float64, whoever calls it: Lightning makes none in these runs either
    (gptlit logs Python floats, which it stores as float32), so nothing needs to be let through."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outputs = out if isinstance(out, (tuple, list)) else [out]
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in outputs):
            raise AssertionError(f"{func} made a float64 tensor")
        return out


def test_the_mode_catches_a_float64():
    with NoFloat64(), pytest.raises(AssertionError, match="float64"):
        torch.ones(2).double()


@pytest.mark.parametrize("model", ["tiny", "qwen3_tiny"])
def test_training_with_evaluation_makes_no_float64(tmp_path, model):
    from gptlit.cli.build import fit

    cfg = compose_train(tmp_path, f"model={model}", "trainer.max_steps=3", "trainer.max_epochs=-1",
                        "trainer.val_check_interval=2", "trainer.limit_val_batches=2", "scheduler=cosine",
                        "trainer.gradient_clip_val=1.0", "callbacks.export_weights=null")
    with NoFloat64():
        trainer = fit(cfg)
    assert trainer.lightning_module.history, "no evaluation ran"


def test_perplexity_and_generation_make_no_float64(tiny_cfg):
    model = build_model({**tiny_cfg, "context_length": 16}).eval()
    tokens = torch.randint(0, tiny_cfg["vocab_size"], (100,), generator=torch.Generator().manual_seed(0)).tolist()
    idx = torch.tensor([tokens[:5]])
    with NoFloat64():
        result = perplexity(model, tokens, window=16, stride=8, batch_size=3, progress=False,
                            byte_lengths=load_tokenizer(None).byte_lengths)
        generate(model, idx, 6, context_size=16)
        generate(model, idx, 6, context_size=16, decoding=DecodingConfig(temperature=0.8, top_k=20, top_p=0.9),
                 generator=torch.Generator().manual_seed(1))
    assert result.bpb is not None and result.loss > 0
