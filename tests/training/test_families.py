"""Llama 3 and Qwen3 through the same training loop as GPT-2: train.py's config, evaluation, the sample text,
checkpoints that resume bit for bit, the planner and the KV-cache generation of the trained model."""

from __future__ import annotations

import pytest
import torch

from gptlit.cli.build import fit
from gptlit.core.generation import generate
from gptlit.core.llama import LlamaModel
from gptlit.planning.plan import parameter_count

FAMILIES = ["llama3_tiny", "qwen3_tiny"]
COMMON = ["+trainer.limit_train_batches=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=2",
          "model.drop_rate=0.1", "optimizer.lr=0.01"]


@pytest.mark.parametrize("name", FAMILIES)
def test_a_family_trains_and_resumes_bit_for_bit(tmp_path, train_cfg, name, capsys):
    sample = ("+callbacks.sample_text={_target_:gptlit.training.callbacks.sample_text.SampleText,"
              "start_context:'Every effort moves you',max_new_tokens:8}")
    straight = fit(train_cfg(f"model={name}", *COMMON, "trainer.max_epochs=2", sample, run_dir=tmp_path / "a"))
    model = straight.lightning_module.model
    assert isinstance(model, LlamaModel) and model.cfg.family == name.split("_")[0]
    # GPT-2's BPE: the vocabulary is the tokenizer's 50,257 rounded up to 64, not the family's own tokenizer's.
    assert (model.cfg.vocab_size, model.cfg.vocab_used) == (50304, 50257)
    assert parameter_count(model.cfg) == sum(p.numel() for p in model.parameters())
    history = straight.lightning_module.history
    assert len(history) == 2 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert "Every effort moves you" in capsys.readouterr().out  # the sample callback generated with the cache

    fit(train_cfg(f"model={name}", *COMMON, "trainer.max_epochs=1", run_dir=tmp_path / "b"))
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["hyper_parameters"]["model"]["family"] == model.cfg.family
    resumed = fit(train_cfg(f"model={name}", *COMMON, "trainer.max_epochs=2", f"ckpt_path={ckpt}",
                            run_dir=tmp_path / "c"))
    assert resumed.global_step == straight.global_step == 6
    # Dropout on and the data shuffled: equal only if the RNG states, optimizer state and loop position returned.
    a, b = resumed.lightning_module.model.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.lightning_module.history == history

    # The trained model generates the same greedy tokens with and without the KV cache.
    model.eval()
    prompt = torch.tensor([[6109, 3626, 6100, 345]])
    assert torch.equal(generate(model, prompt, 12, 32, use_cache=True), generate(model, prompt, 12, 32, use_cache=False))

    # export.py writes the run's checkpoint as a transformers folder, which computes the model's logits.
    import transformers

    from tests.conftest import run_export

    out = run_export(tmp_path / "hf", f"ckpt_path={tmp_path / 'c' / 'checkpoints' / 'last.ckpt'}")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(theirs).__name__ == {"llama3": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model.cfg.family]
    with torch.no_grad():
        torch.testing.assert_close(theirs(prompt).logits, model(prompt)[..., :50257], rtol=0, atol=1e-4)

    # The run's model.pth loads into the book's model of the family (its Qwen3 names RMSNorm weights "scale").
    state = torch.load(tmp_path / "a" / "model.pth", weights_only=True)
    if model.cfg.family == "llama3":
        from llms_from_scratch.llama3 import Llama3Model as Book
    else:
        from llms_from_scratch.qwen3 import Qwen3Model as Book
        state = {k.replace("norm.weight", "norm.scale").replace("norm1.weight", "norm1.scale")
                 .replace("norm2.weight", "norm2.scale"): v for k, v in state.items()}
    cfg = model.cfg
    book = Book({"vocab_size": cfg.vocab_size, "context_length": cfg.context_length, "emb_dim": cfg.emb_dim,
                 "n_heads": cfg.n_heads, "n_layers": cfg.n_layers, "hidden_dim": cfg.hidden_dim,
                 "head_dim": cfg.head_dim, "qk_norm": cfg.qk_norm, "n_kv_groups": cfg.n_kv_groups,
                 "rope_base": cfg.rope_base, "dtype": torch.float32,
                 "rope_freq": cfg.rope_scaling and {**cfg.rope_scaling}}).eval()
    book.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(book(prompt), model(prompt), rtol=0, atol=1e-4)


@pytest.mark.parametrize("source", ["text", "textfiles", "hf"])
@pytest.mark.parametrize("name", FAMILIES)
def test_a_family_trains_on_every_data_source(tmp_path, train_cfg, verdict_text, name, source):
    import json

    overrides = []
    if source == "textfiles":
        (tmp_path / "books").mkdir()
        half = len(verdict_text) // 2
        (tmp_path / "books" / "a.txt").write_text(verdict_text[:half], encoding="utf-8")
        (tmp_path / "books" / "b.txt").write_text(verdict_text[half:], encoding="utf-8")
        overrides = ["data=textfiles", f"data.path={tmp_path / 'books'}"]
    elif source == "hf":
        paragraphs = [p for p in verdict_text.split("\n\n") if p.strip()]
        (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
        overrides = ["data=hf", f"data.path={tmp_path / 'corpus.jsonl'}"]
    if source != "text":
        overrides += [f"data.cache_dir={tmp_path / 'cache'}", "data.tokenize_workers=1", "data.progress=false"]
    trainer = fit(train_cfg(f"model={name}", *overrides, "trainer.max_steps=2", "trainer.val_check_interval=2",
                            "trainer.limit_val_batches=1", "callbacks.export_weights=null", run_dir=tmp_path / "run"))
    assert trainer.global_step == 2 and trainer.lightning_module.history[-1]["val_loss"] < 11.5
