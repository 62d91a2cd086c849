import json
import logging

import pytest
import torch

from gptlit import hub
from gptlit.errors import UserError
from gptlit.core.generation import generate
from gptlit.training.module import GPTLitModule
from gptlit.weights.io import model_from_weights, read_weights
from tests.conftest import compose_train, tiny_hf_gpt2
from gptlit.cli.build import fit as train

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    return folder, tiny_hf_gpt2(folder)


@pytest.fixture(scope="module")
def ours(hf_folder):
    return model_from_weights(read_weights(str(hf_folder[0]))).eval()


def test_mapped_model_has_the_books_gpt2_settings(ours, hf_folder):
    assert ours.cfg.context_length == 64 and ours.cfg.qkv_bias and ours.cfg.n_heads == 4
    assert ours.out_head.weight is ours.tok_emb.weight


def test_logits_equal_transformers(ours, hf_folder):
    _, hf = hf_folder
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        assert (ours(idx) - expected).abs().max().item() <= 1e-4


def test_greedy_generation_equals_transformers(ours, hf_folder):
    _, hf = hf_folder
    idx = torch.tensor([[6109, 3626, 6100, 345]])  # "Every effort moves you"
    expected = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=40, do_sample=False, pad_token_id=50256)
    assert torch.equal(generate(ours, idx, 40), expected)


def test_a_separate_lm_head_is_kept_separate(tmp_path):
    hf = tiny_hf_gpt2(tmp_path, tied=False)
    model = model_from_weights(read_weights(str(tmp_path))).eval()
    assert model.out_head.weight is not model.tok_emb.weight
    idx = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        assert (model(idx) - hf(idx).logits).abs().max().item() <= 1e-4


def test_unknown_name_is_refused():
    with pytest.raises(UserError, match=r"gpt3 is neither a GPT-2 name \(gpt2, gpt2-medium, gpt2-large, gpt2-xl\)"):
        read_weights("gpt3")


def test_offline_without_cache_is_one_clear_error(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(hub, "reachable", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"could not get openai-community/gpt2-xl from the Hugging Face hub \(offline\)"):
        read_weights("gpt2-xl")


def test_folder_without_weights_is_refused(tmp_path, hf_folder):
    (tmp_path / "config.json").write_text((hf_folder[0] / "config.json").read_text())
    with pytest.raises(UserError, match="lacks model.safetensors"):
        read_weights(str(tmp_path))


def test_other_architectures_are_refused(tmp_path, hf_folder):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((hf_folder[0] / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(UserError, match="another activation"):
        read_weights(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(UserError, match="holds a 'mistral' model; gptlit runs GPT-2, Llama 3 and Qwen3"):
        read_weights(str(tmp_path))
    # A Llama folder is read as one (tests/weights/test_hf_llama.py); GPT-2's config is not a Llama config.
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(UserError, match="config.json lacks 'num_attention_heads', which a llama config holds"):
        read_weights(str(tmp_path))


def test_continue_pretraining_from_gpt2_weights_with_a_shorter_context(tmp_path, hf_folder, caplog):
    # The analogue of `train.py model=gpt124m model.init_from=gpt2 data.context_length=256` at tiny size.
    folder, hf = hf_folder
    cfg = compose_train(tmp_path, "model.n_heads=4", f"init_from={folder}", "trainer.max_steps=1")
    with caplog.at_level(logging.INFO, logger="gptlit.weights.io"):
        trainer = train(cfg)
    assert "Using the first 32 of the 64 positions" in caplog.text
    assert "Setting qkv_bias=True" in caplog.text
    model = trainer.lightning_module.model
    assert model.cfg.context_length == 32 and model.cfg.qkv_bias
    assert model.out_head.weight is model.tok_emb.weight
    # The hyper-parameters record the model actually trained, so its checkpoint loads back as such.
    assert trainer.lightning_module.hparams["model"]["qkv_bias"] is True


def test_pretrained_context_cannot_grow(hf_folder):
    with pytest.raises(UserError, match=r"context_length 128 exceeds the 64 positions"):
        GPTLitModule({**HF_TINY_GPTCONFIG, "context_length": 128}, init_from=str(hf_folder[0]))


def test_pretrained_head_count_must_match(hf_folder):
    with pytest.raises(UserError, match=r"trained with n_heads=4, the model has 2; set model.n_heads=4"):
        GPTLitModule({**HF_TINY_GPTCONFIG, "n_heads": 2}, init_from=str(hf_folder[0]))


HF_TINY_GPTCONFIG = {"vocab_size": 50257, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "qkv_bias": True}
