"""A tokenizer of one's own, end to end: tokenizer.py trains it, and train, generate, eval and export use it."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gptlit.cli import eval as eval_py
from gptlit.cli import export as export_py
from gptlit.cli import generate as generate_py
from gptlit.cli.build import fit
from gptlit.core.generation import generate
from gptlit.core.tokenizer import ENDOFTEXT, load_tokenizer, text_to_token_ids, token_ids_to_text
from gptlit.errors import UserError, find_user_error

from ..conftest import ROOT, compose_config, compose_train

pytestmark = pytest.mark.slow

VOCAB = 500  # not a multiple of 64: the model pads its vocabulary to 512
SAMPLES = ["Every effort moves you", "Hello, world: it's 12 o'clock", "naïve café — “quotes” 日本語 😀",
           f"one document{ENDOFTEXT}the next"]


def run(entry, *overrides, config):
    try:
        return entry.run(compose_config(*overrides, config=config))
    except Exception as err:
        raise find_user_error(err) or err


@pytest.fixture(scope="module")
def own(tmp_path_factory, verdict_path):
    """tokenizer.py on The Verdict, then a short tiny run with that tokenizer: (tokenizer folder, run dir, model)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    out = subprocess.run([sys.executable, "tokenizer.py", f"data.path={verdict_path}", f"vocab_size={VOCAB}",
                          f"out_dir={folder}", "progress=false"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"trained a byte-level BPE of {VOCAB} tokens on ") and "tokenizer.json" in lines[0]
    assert lines[1].startswith("compression on the validation part") and "GPT-2's BPE" in lines[-1]
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose_train(run_dir, f"tokenizer.path={folder}", "trainer.max_steps=6", "trainer.val_check_interval=3",
                        "trainer.limit_val_batches=2")
    trainer = fit(cfg)
    return folder, run_dir, trainer.lightning_module.model, trainer


def test_trained_tokenizer_round_trips_and_compresses_its_corpus(own, verdict_text):
    folder, *_ = own
    tokenizer = load_tokenizer(folder)
    assert tokenizer.n_vocab == VOCAB and tokenizer.eot_id == 0 and tokenizer.fingerprint.startswith("sha256:")
    for text in SAMPLES + [verdict_text]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
        # tiktoken runs the trained merges: the ids are the tokenizers library's own.
        assert tokenizer.encode(text) == tokenizer.backend.encode(text, add_special_tokens=False).ids
    assert tokenizer.encode(ENDOFTEXT) == [tokenizer.eot_id]
    # Bytes of text behind each token: the special token stands for none.
    assert tokenizer.byte_lengths[tokenizer.eot_id] == 0
    ids = tokenizer.encode(verdict_text)
    assert int(tokenizer.byte_lengths[ids].sum()) == len(verdict_text.encode("utf-8"))


def test_the_model_follows_the_tokenizer_and_records_it(own):
    folder, run_dir, model, _ = own
    assert (model.cfg.vocab_size, model.cfg.vocab_used) == (512, VOCAB)
    assert model.cfg.tokenizer == load_tokenizer(folder).fingerprint
    saved = (run_dir / "checkpoints" / "last.ckpt")
    assert torch.load(saved, weights_only=True)["hyper_parameters"]["model"]["tokenizer"] == model.cfg.tokenizer


def test_generation_uses_the_tokenizer_and_never_samples_padding(own, capsys):
    folder, run_dir, model, _ = own
    tokenizer = load_tokenizer(folder)
    run(generate_py, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"tokenizer.path={folder}",
        "max_new_tokens=12", config="generate")
    printed = capsys.readouterr().out
    expected = generate(model.eval(), text_to_token_ids("Every effort moves you", tokenizer), 12)
    assert printed == token_ids_to_text(expected, tokenizer) + "\n"
    # Sampling at a high temperature from weights whose padding rows are made the likeliest: never a padding id.
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.out_head.weight[VOCAB:] = 10.0
    ids = generate(changed, text_to_token_ids("Every", tokenizer), 40, temperature=5.0)
    assert int(ids.max()) < VOCAB


def test_weights_refuse_another_tokenizer_in_one_line(own):
    folder, run_dir, *_ = own
    with pytest.raises(UserError, match=r"was trained with the tokenizer sha256:\w+, not GPT-2's BPE \(tokenizer.path unset\)"):
        run(generate_py, f"ckpt_path={run_dir / 'model.safetensors'}", config="generate")
    out = subprocess.run([sys.executable, "eval.py", f"ckpt_path={run_dir / 'model.safetensors'}", "progress=false"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "pass tokenizer.path=" in out.stderr


def hand_bpb(model, tokens: list[int], window: int, byte_lengths: torch.Tensor) -> float:
    """Bits per byte by hand: non-overlapping windows, every target scored once; special tokens in neither sum."""
    nats = n_bytes = 0.0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, window):
            chunk = torch.tensor(tokens[start : start + window + 1])
            if len(chunk) < 2:
                break
            logits = model(chunk[None, :-1])[0]
            losses = F.cross_entropy(logits, chunk[1:], reduction="none")
            for loss, target in zip(losses.tolist(), chunk[1:].tolist()):
                if byte_lengths[target] > 0:
                    nats += loss
                    n_bytes += int(byte_lengths[target])
    return nats / math.log(2) / n_bytes


def test_eval_prints_bits_per_byte_equal_to_a_hand_computation(own, tmp_path, verdict_path, verdict_text):
    folder, run_dir, model, _ = own
    tokenizer = load_tokenizer(folder)
    report = run(eval_py, f"ckpt_path={run_dir / 'model.safetensors'}", f"tokenizer.path={folder}",
                 f"data.path={verdict_path}", "progress=false", f"run_dir={tmp_path}", config="eval")
    val = verdict_text[int(0.9 * len(verdict_text)):]
    expected = hand_bpb(model, tokenizer.encode(val), model.cfg.context_length, tokenizer.byte_lengths)
    assert report["bpb"] == pytest.approx(expected, rel=1e-6)
    assert json.loads((tmp_path / "eval.json").read_text())["bpb"] == report["bpb"]


def test_training_logs_val_bpb(own):
    *_, trainer = own
    assert 0 < trainer.callback_metrics["val/bpb"].item() < 20


def test_export_carries_the_tokenizer_for_transformers(own, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, run_dir, model, _ = own
    tokenizer = load_tokenizer(folder)
    out = run(export_py, f"ckpt_path={run_dir / 'model.safetensors'}", f"tokenizer.path={folder}",
              f"out_dir={tmp_path / 'hf'}", config="export")
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    for text in SAMPLES:
        assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.config.vocab_size == VOCAB  # the padding is left out of the export
    model = model.eval()
    prompt = text_to_token_ids(SAMPLES[0], tokenizer)
    with torch.no_grad():
        assert (hf(prompt).logits - model(prompt)[..., :VOCAB]).abs().max().item() <= 1e-4
    ours = generate(model, prompt, 15)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=15, do_sample=False,
                         pad_token_id=tokenizer.eot_id)
    assert torch.equal(theirs, ours)
    assert hf_tokenizer.decode(theirs[0]) == token_ids_to_text(ours, tokenizer)
    # The export is a folder gptlit reads back as weights and as tokenizer.path.
    reread = export_py.load_model(compose_config(f"pretrained={out}", f"tokenizer.path={out}", f"out_dir={tmp_path / 'x'}",
                                                 config="export"))[0]
    assert reread.cfg.tokenizer == tokenizer.fingerprint


def test_a_changed_tokenizer_never_reuses_cached_tokens(own, tmp_path, verdict_text):
    from gptlit.data.textfiles import TextFilesDataModule

    folder, *_ = own
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(verdict_text, encoding="utf-8")
    paths = []
    for tokenizer in (None, str(folder)):
        data = TextFilesDataModule(str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"), context_length=32,
                                   tokenize_workers=1, progress=False, tokenizer=tokenizer)
        data.prepare_data()
        paths.append(data.token_path)
    assert paths[0] != paths[1] and all(p.is_file() for p in paths)
