"""Llama 3 and Qwen3 weights in and out: Hugging Face folders (one file or shards) and hub ids read by
pretrained=/init_from= with their own tokenizer, gptlit's own checkpoints of them, exports that transformers loads,
and loading in one copy of the weights. The references are transformers models saved here (tests/hf_llama_folders.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from gptlit import hub
from gptlit.core.llama import LlamaConfig, LlamaModel
from gptlit.core.model import GPTConfig
from gptlit.core.tokenizer import load_tokenizer
from gptlit.data.tokenizer_training import train_bpe
from gptlit.errors import UserError
from gptlit.weights import hf_folder
from gptlit.weights.hf_llama import config_to_hf, theirs
from gptlit.weights.io import (check_same_config, init_model, model_from_weights, read_weights, save_safetensors)
from tests.conftest import ROOT, run_export
from tests.core.test_llama import LLAMA, QWEN, random_model
from tests.hf_llama_folders import CORPUS, SAMPLES, tiny_folder, tiny_tokenizer

PROMPT = "Every effort moves you"
# (family, sharded, tied head, padding ids): both families, both file layouts, both heads, a rounded-up vocabulary.
FOLDERS = {"llama3-shards": ("llama3", True, True, 0), "llama3-untied": ("llama3", False, False, 0),
           "qwen3-padded": ("qwen3", True, True, 8)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """name -> (folder, the transformers model saved there)."""
    made = {}
    for name, (family, shard, tied, padding) in FOLDERS.items():
        folder = tmp_path_factory.mktemp(name)
        made[name] = folder, tiny_folder(family, folder, shard=shard, tied=tied, padding=padding)
    return made


def run_cli(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def hf_greedy(hf, ids: torch.Tensor, n: int) -> torch.Tensor:
    """transformers' greedy continuation of ``ids``, ``n`` tokens whatever they are (generate.py stops at no eos)."""
    hf.generation_config.eos_token_id = None
    return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                       pad_token_id=0)[0, ids.shape[1]:]


@pytest.mark.parametrize("name", FOLDERS)
@torch.no_grad()
def test_folder_loads_with_the_logits_of_transformers(folders, name):
    folder, hf = folders[name]
    family, _, tied, padding = FOLDERS[name]
    weights = read_weights(str(folder))
    model = model_from_weights(weights).eval()
    assert isinstance(model, LlamaModel) and model.cfg.family == family and model.tied_head == tied
    assert model.cfg.vocab_used == (hf.config.vocab_size - padding if padding else None)
    assert weights.tokenizer == folder and model.cfg.tokenizer == load_tokenizer(folder).fingerprint
    if family == "llama3":
        assert model.cfg.rope_scaling == {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_context_length": 16.0}
    idx = torch.randint(0, hf.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(idx), hf(idx).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["llama3", "qwen3"])
def test_folder_tokenizer_encodes_and_decodes_as_transformers(tmp_path, family):
    tiny_tokenizer(family, tmp_path)
    ours, theirs_ = load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert type(ours).__name__ == "HubTokenizer"
    assert ours.bos_id == theirs_.bos_token_id and ours.eot_id == theirs_.eos_token_id
    for text in SAMPLES:
        assert ours.encode_prompt(text) == theirs_(text).input_ids
        assert ours.decode(ours.encode(text)) == text
        assert ours.decode(ours.encode_prompt(text)) == theirs_.decode(theirs_(text).input_ids)
    # A special token's name typed by a user is text, not the token; bits per byte count no special token.
    special = "<|end_of_text|>" if family == "llama3" else "<|im_end|>"
    assert ours.encode(special) == [theirs_.convert_tokens_to_ids(special)]
    assert len(ours.encode_ordinary(special)) > 1 and ours.decode(ours.encode_ordinary(special)) == special
    assert ours.byte_lengths[ours.eot_id] == 0 and int(ours.byte_lengths[ours.encode(CORPUS[0])].sum()) == len(CORPUS[0])


@pytest.mark.parametrize("name", ["llama3-shards", "qwen3-padded"])
def test_generate_py_prints_the_greedy_text_of_transformers(folders, name):
    folder, hf = folders[name]
    out = run_cli("generate.py", f"pretrained={folder}", f"prompt={PROMPT}", "max_new_tokens=24")
    assert out.returncode == 0, out.stderr
    tokenizer = load_tokenizer(folder)  # generate.py took the folder's tokenizer: tokenizer.path was not given
    ids = AutoTokenizer.from_pretrained(folder)(PROMPT, return_tensors="pt").input_ids
    new = hf_greedy(hf, ids, 24)
    assert int(new.max()) < tokenizer.n_vocab  # the padding ids are never the likeliest (their rows are zero)
    assert out.stdout == PROMPT + tokenizer.decode(new.tolist()) + "\n"


def trained_tokenizer(folder: Path) -> Path:
    return train_bpe(CORPUS * 3, 300, [], folder / "tokenizer.json", progress=False)


def gptlit_llama(settings: dict, tokenizer: str, vocab_used: int, vocab_size: int) -> LlamaModel:
    """A random gptlit model as training leaves one: its tokenizer recorded, its vocabulary rounded up."""
    model = random_model({**settings, "vocab_size": vocab_size, "vocab_used": vocab_used, "tokenizer": tokenizer})
    return model


def lightning_checkpoint(model: LlamaModel, path: Path) -> Path:
    """What training writes: the module's state (``model.`` names), the model's config as a hyper-parameter and the
    run's counters."""
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": model.cfg.to_dict()}, "global_step": 3, "tokens_seen": 192,
                "history": [{"step": 3, "tokens_seen": 192, "train_loss": 5.5, "val_loss": 5.75}]}, path)
    return path


@pytest.mark.parametrize("settings,tokenizer", [(LLAMA, "trained"), (QWEN, "gpt2")], ids=["llama3", "qwen3"])
@torch.no_grad()
def test_gptlit_checkpoint_exports_to_transformers(tmp_path, settings, tokenizer, capfd):
    if tokenizer == "trained":
        path = trained_tokenizer(tmp_path)
        ours_tokenizer, overrides, vocab_used = load_tokenizer(path), [f"tokenizer.path={path}"], 300
    else:
        ours_tokenizer, overrides, vocab_used = load_tokenizer(), [], 50257
    model = gptlit_llama(settings, ours_tokenizer.fingerprint, vocab_used, vocab_used + 15)
    ckpt = lightning_checkpoint(model, tmp_path / "last.ckpt")
    capfd.readouterr()
    out = run_export(tmp_path / "hf", f"ckpt_path={ckpt}", *overrides)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    printed = capfd.readouterr()
    assert "rope" not in printed.err.lower() and "warn" not in printed.err.lower(), printed.err
    assert type(hf).__name__ == {"llama3": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model.cfg.family]
    assert hf.config.vocab_size == vocab_used  # the padding rows are left out
    for text in SAMPLES[:3]:
        assert hf_tokenizer(text).input_ids == ours_tokenizer.encode_prompt(text)
    idx = torch.randint(0, vocab_used, (2, 40), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hf(idx).logits, model(idx)[..., :vocab_used], rtol=0, atol=1e-4)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == ours_tokenizer.eot_id
    card = (out / "README.md").read_text()
    assert "3 optimizer steps (192 tokens)" in card and f"exported from `{ckpt}`" in card
    # The export is a folder gptlit reads back: the same model, the same tokenizer.
    back = model_from_weights(read_weights(str(out))).eval()
    assert back.cfg.tokenizer == ours_tokenizer.fingerprint and back.cfg.vocab_size == vocab_used
    torch.testing.assert_close(back(idx), model(idx)[..., :vocab_used], rtol=0, atol=0)


@torch.no_grad()
def test_gptlit_safetensors_and_checkpoint_load_as_the_model(tmp_path):
    model = gptlit_llama(QWEN, "gpt2", 50257, 50272)
    lightning_checkpoint(model, tmp_path / "last.ckpt")
    save_safetensors(model, tmp_path / "model.safetensors")
    idx = torch.randint(0, 50257, (1, 20))
    for name in ("last.ckpt", "model.safetensors"):
        loaded = model_from_weights(read_weights(tmp_path / name)).eval()
        assert isinstance(loaded, LlamaModel) and loaded.cfg == model.cfg and loaded.tied_head
        assert torch.equal(loaded(idx), model(idx))
    # A resume checks the stored config against the run's, whatever the family.
    weights = read_weights(tmp_path / "last.ckpt")
    check_same_config(model.cfg, weights)
    with pytest.raises(UserError, match=r"trained with model.n_kv_groups=2, this run asks for model.n_kv_groups=4"):
        check_same_config(LlamaConfig.from_any({**model.cfg.to_dict(), "n_kv_groups": 4}), weights)
    with pytest.raises(UserError, match=r"holds a qwen3 model, this run's is a gpt2 one \(model.family\)"):
        check_same_config(GPTConfig(), weights)


@torch.no_grad()
def test_hf_folder_exports_to_the_same_transformers_model(folders, tmp_path):
    folder, hf = folders["qwen3-padded"]
    out = run_export(tmp_path / "hf", f"pretrained={folder}")
    # The tokenizer's files are the model's own, copied; the padding rows (8) are left out.
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    used = hf.config.vocab_size - 8
    assert exported.config.vocab_size == used and exported.config.tie_word_embeddings
    idx = torch.randint(0, used, (2, 40), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(exported(idx).logits, hf(idx).logits[..., :used], rtol=0, atol=1e-4)
    tensors = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in tensors and tensors["model.embed_tokens.weight"].shape[0] == used


def test_continued_pretraining_starts_from_the_folder(folders, caplog):
    folder, hf = folders["qwen3-padded"]
    stored = read_weights(str(folder)).config
    # What a run's config holds: the tokenizer's ids rounded up its own way, a shorter context.
    config = LlamaConfig.from_any({**stored.to_dict(), "vocab_size": stored.vocab_used + 4, "context_length": 32,
                                   "drop_rate": 0.1})
    with caplog.at_level(logging.INFO, logger="gptlit.weights.io"):
        model = init_model(config, str(folder))
    assert f"Setting vocab_size={hf.config.vocab_size}" in caplog.text
    assert model.cfg.context_length == 32 and model.cos.shape[0] == 32 and model.cfg.drop_rate == 0.1
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters()) and model.tied_head
    idx = torch.randint(0, stored.vocab_used, (1, 32))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx), hf(idx).logits, rtol=0, atol=1e-4)
    with pytest.raises(UserError, match=r"is a model with model.n_heads=4, this run asks for model.n_heads=8; pass model.n_heads=4"):
        init_model(LlamaConfig.from_any({**config.to_dict(), "n_heads": 8, "n_kv_groups": 2}), str(folder))
    with pytest.raises(UserError, match=r"context_length 128 exceeds the 64 positions"):
        init_model(LlamaConfig.from_any({**config.to_dict(), "context_length": 128}), str(folder))
    with pytest.raises(UserError, match=r"was trained with the tokenizer sha256:\w+, this run's is gpt2"):
        init_model(LlamaConfig.from_any({**config.to_dict(), "tokenizer": "gpt2"}), str(folder))
    with pytest.raises(UserError, match=r"holds a qwen3 model, this run's is a gpt2 one"):
        init_model(GPTConfig(tokenizer=stored.tokenizer), str(folder))


def test_loading_takes_one_copy_of_the_weights(tmp_path):
    """A 168 MB float32 model loads into about 168 MB more memory at its peak, the file's own pages: the
    parameters are views of the memory-mapped file (no anonymous memory), where building a model and copying the
    weights into it would take twice that."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("reads Linux's /proc/self/status")
    folder = tmp_path / "big"
    folder.mkdir()
    tiny_tokenizer("llama3", folder)
    cfg = LlamaConfig(vocab_size=16000, context_length=256, emb_dim=1024, n_heads=8, n_kv_groups=8, n_layers=2,
                      hidden_dim=2816, tie_embeddings=True)
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in LlamaModel(cfg).state_dict().items() if name != "out_head.weight"}
    save_file({theirs(name): torch.full(shape, 0.01) for name, shape in shapes.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config_to_hf(cfg)))
    size = (folder / "model.safetensors").stat().st_size
    tiny_folder("llama3", tmp_path / "tiny")
    code = textwrap.dedent(f"""
        import json, re
        from gptlit.weights.io import model_from_weights, read_weights

        def status():
            text = open("/proc/self/status").read()
            return {{k: int(re.search(k + r":\\s+(\\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon")}}

        model_from_weights(read_weights({str(tmp_path / 'tiny')!r}))  # imports, and the meta device's first use
        before = status()
        model = model_from_weights(read_weights({str(folder)!r}))
        after = status()
        maps = [line.split()[0].split("-") for line in open("/proc/self/maps") if "model.safetensors" in line]
        inside = all(any(int(a, 16) <= p.data_ptr() < int(b, 16) for a, b in maps) for p in model.parameters())
        print(json.dumps({{"peak": after["VmHWM"] - before["VmRSS"], "anon": after["RssAnon"] - before["RssAnon"],
                          "inside": inside}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    found = json.loads(out.stdout.splitlines()[-1])
    assert found["inside"]  # every parameter is the file's memory
    assert found["anon"] < 0.1 * size, found
    assert found["peak"] < 1.4 * size, (found, size)


def test_hub_id_downloads_the_model_and_tokenizer_files(folders, monkeypatch):
    import huggingface_hub

    folder, _ = folders["qwen3-padded"]
    asked = {}

    def snapshot_download(repo_id, allow_patterns, local_files_only):
        asked.update(repo_id=repo_id, patterns=allow_patterns, offline=local_files_only)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(hub, "reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    weights = read_weights("Qwen/Qwen3-tiny")
    assert asked == {"repo_id": "Qwen/Qwen3-tiny", "patterns": hf_folder.DOWNLOADED, "offline": False}
    assert weights.tokenizer == folder and weights.source == "Qwen/Qwen3-tiny"
    assert "*.safetensors" in asked["patterns"] and not any(p.endswith((".bin", ".pth")) for p in asked["patterns"])


def test_hub_id_offline_is_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(hub, "reachable", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"Qwen/Qwen3-0.6B is no folder here, and could not be downloaded from the "
                                        r"Hugging Face hub \(offline\); connect to the internet"):
        read_weights("Qwen/Qwen3-0.6B")
    monkeypatch.setattr(hub, "reachable", lambda: True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1: the cache only, also online
    with pytest.raises(UserError, match=r"could not be downloaded from the Hugging Face hub \(offline\)"):
        read_weights("Qwen/Qwen3-0.6B")
    out = run_cli("generate.py", "pretrained=meta-llama/Llama-3.2-1B", env={"HF_HOME": str(tmp_path / "hf")})
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "(offline)" in out.stderr, out.stderr


def test_damaged_folders_are_one_line(folders, tmp_path):
    folder, _ = folders["llama3-shards"]
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in folder.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(UserError, match=rf"lacks 1 of the \d+ weight files its model.safetensors.index.json lists "
                                        rf"\(e.g. {shard.name}\)"):
        read_weights(str(broken))
    (broken / "model.safetensors.index.json").unlink()
    with pytest.raises(UserError, match="holds no model.safetensors nor model.safetensors.index.json"):
        read_weights(str(broken))
    single = tmp_path / "single"
    tiny_folder("qwen3", single)
    (single / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="holds no tokenizer.json; gptlit runs a qwen3 model with the tokenizer"):
        read_weights(str(single))
    tensors = load_file(single / "model.safetensors")
    save_file({**tensors, "model.layers.0.self_attn.q_proj.bias": torch.zeros(128)}, single / "model.safetensors")
    tiny_tokenizer("qwen3", single)
    with pytest.raises(UserError, match=r"holds 1 tensors that a qwen3 model has no place for \(e.g. "
                                        r"model.layers.0.self_attn.q_proj.bias\)"):
        read_weights(str(single))


def test_serve_py_answers_with_the_folders_model_and_tokenizer(folders, tmp_path):
    from tests.serving.serving_parts import Server

    folder, hf = folders["qwen3-padded"]
    tokenizer = load_tokenizer(folder)
    server = Server(f"pretrained={folder}", "model_name=x", log_dir=tmp_path)
    try:
        answer = server.client.post("/v1/completions", json={
            "model": "x", "prompt": PROMPT, "max_tokens": 16, "temperature": 0, "return_token_ids": True}).json()
    finally:
        server.stop()
    expected = hf_greedy(hf, torch.tensor([tokenizer.encode_prompt(PROMPT)]), 16).tolist()
    # The server stops at the folder's end of text (generation_config.json's first eos: <|im_end|>), not GPT-2's.
    if tokenizer.eot_id in expected:
        expected = expected[:expected.index(tokenizer.eot_id)]
    choice = answer["choices"][0]
    assert len(expected) > 4 and choice["token_ids"] == expected and choice["text"] == tokenizer.decode(expected)


def test_bfloat16_weights_stay_bfloat16_and_train_in_float32(tmp_path):
    from gptlit.core.generation import generate

    hf = tiny_folder("llama3", tmp_path)
    hf.to(torch.bfloat16).save_pretrained(tmp_path)  # as the hub stores Llama 3 and Qwen3
    model = model_from_weights(read_weights(str(tmp_path))).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    prompt = torch.tensor([load_tokenizer(tmp_path).encode_prompt(PROMPT)])
    cached, uncached = (generate(model, prompt, 8, 64, use_cache=use) for use in (True, False))
    assert torch.equal(cached, uncached)
    trained = init_model(model.cfg, str(tmp_path))
    assert {p.dtype for p in trained.parameters()} == {torch.float32} and trained.tied_head
    assert all(torch.equal(p.float(), trained.state_dict()[name]) for name, p in model.state_dict().items())
