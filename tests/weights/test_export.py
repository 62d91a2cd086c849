"""export.py: the folder loads in transformers with no custom code and computes what gptlit computes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from gptlit.core.generation import generate
from gptlit.core.tokenizer import encode
from gptlit.errors import UserError
from gptlit.core.model import GPTModel
from gptlit import hub
from gptlit.weights import gpt2
from gptlit.weights.hf_export import model_card
from gptlit.weights.io import model_from_weights, read_weights
from tests.conftest import ROOT, run_export, tiny_hf_gpt2

PROMPT = "Every effort moves you"


def assert_transformers_computes_the_same(model, folder, new_tokens=20):
    """Logits within 1e-4 and the same greedy tokens, in the transformers model loaded from ``folder``."""
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    model = model.eval()
    idx = torch.randint(0, 50257, (2, model.cfg.context_length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)).abs().max().item() <= 1e-4
    prompt = torch.tensor([encode(PROMPT)])
    expected = generate(model, prompt, new_tokens, context_size=model.cfg.context_length)
    got = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, do_sample=False,
                      pad_token_id=50256)
    assert torch.equal(got, expected)


@pytest.fixture
def trained(tiny_run):
    """A short train.py run of the tiny model (an untied head, no query/key/value biases, as the book's)."""
    return tiny_run


def test_trained_checkpoint_exports_to_transformers(tmp_path, trained):
    run_dir, model = trained
    assert model.out_head.weight is not model.tok_emb.weight and not model.cfg.qkv_bias
    out = run_export(tmp_path / "hf", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["n_positions"] == 32
    tensors = load_file(out / "model.safetensors")
    assert "lm_head.weight" in tensors and not tensors["transformer.h.0.attn.c_attn.bias"].any()
    assert_transformers_computes_the_same(model, out)
    card = (out / "README.md").read_text()
    assert "3 optimizer steps" in card and "validation loss" in card and "model: tiny" not in card
    assert "_target_: gptlit.core.model.GPTConfig" in card  # the run's own config
    # The same folder from the run's model.safetensors and its book-format model.pth (with model=).
    for source in (f"ckpt_path={run_dir / 'model.safetensors'}", f"ckpt_path={run_dir / 'model.pth'}"):
        extra = ["model=tiny"] if source.endswith(".pth") else []
        folder = run_export(tmp_path / source[-4:], source, *extra)
        assert load_file(folder / "model.safetensors").keys() == tensors.keys()


def test_tokenizer_loads_offline_and_encodes_as_gptlit(tmp_path, trained):
    run_dir, _ = trained
    out = run_export(tmp_path / "hf", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "Every effort moves you <|endoftext|> naïve  spaces\n\nand 1234 digits"
    assert tokenizer(text).input_ids == encode(text)
    assert tokenizer.eos_token_id == 50256 and tokenizer.model_max_length == 32


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_folder_round_trip(tmp_path, tied):
    tiny_hf_gpt2(tmp_path / "original", tied=tied)
    out = run_export(tmp_path / "exported", f"pretrained={tmp_path / 'original'}")
    model = model_from_weights(read_weights(str(out)))
    assert (model.out_head.weight is model.tok_emb.weight) == tied
    assert_transformers_computes_the_same(model, out)
    # The very tensors transformers saved come back, under the same names.
    before, after = load_file(tmp_path / "original" / "model.safetensors"), load_file(out / "model.safetensors")
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in after)


def test_name_table_is_its_own_inverse(tiny_cfg):
    from gptlit.core.model import GPTModel

    model = GPTModel({**tiny_cfg, "qkv_bias": True})
    state = model.state_dict()
    back = gpt2._map({k.removeprefix("transformer."): v for k, v in gpt2.to_gpt2(state, 2, tied=False).items()}, 2)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_existing_out_dir_is_kept_unless_overwrite(tmp_path, trained):
    run_dir, _ = trained
    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="is already a folder; choose another out_dir or pass overwrite=true"):
        run_export(tmp_path / "hf", ckpt)
    assert (tmp_path / "hf" / "mine.txt").read_text() == "keep"
    run_export(tmp_path / "hf", ckpt, "overwrite=true")
    assert not (tmp_path / "hf" / "mine.txt").exists() and (tmp_path / "hf" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no work folders left beside it


def test_push_to_hub_offline_is_one_line_after_a_complete_export(tmp_path, trained, monkeypatch):
    run_dir, _ = trained
    monkeypatch.setattr(hub, "reachable", lambda: False)
    with pytest.raises(UserError, match=r"the Hugging Face hub is not reachable \(offline\); the export in .* is complete"):
        run_export(tmp_path / "hf", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "push_to_hub=me/tiny")
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_cli_without_a_source_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "export.py", f"out_dir={tmp_path / 'x'}"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr == "error: pass exactly one of ckpt_path=path/to/weights and pretrained=gpt2|gpt2-medium|...|/folder\n"
    assert not (tmp_path / "x").exists()


def test_model_card_counts_the_checkpoints_steps_not_the_last_evaluations(tiny_cfg):
    run = {"global_step": 7, "tokens_seen": 448,
           "history": [{"step": 5, "tokens_seen": 320, "train_loss": 6.25, "val_loss": 7.5}]}
    card = model_card(GPTModel(tiny_cfg), "last.ckpt", run, None)
    assert "7 optimizer steps (448 tokens). At the last evaluation (step 5): train loss 6.250, validation loss 7.500." in card


def test_cli_without_out_dir_is_one_line_before_reading_weights(tmp_path):
    out = subprocess.run([sys.executable, "export.py", f"ckpt_path={tmp_path / 'missing.ckpt'}"], cwd=ROOT,
                         capture_output=True, text=True)
    # The weights (here: a missing file) are not even looked at.
    assert out.returncode == 2 and out.stderr == ("error: export.py needs out_dir=DIR, the folder to write the "
                                                  "transformers model into, e.g. out_dir=exported/my-gpt\n")
