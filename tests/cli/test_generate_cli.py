import io
import os
import subprocess
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gptlit.cli import generate as generate_py
from gptlit.errors import UserError, find_user_error
from gptlit.core.generation import DecodingConfig, generate
from gptlit.core.model import GPTModel
from gptlit.core.tokenizer import text_to_token_ids, token_ids_to_text
from gptlit.weights.io import model_from_weights, read_weights, save_book_pth
from tests.conftest import ROOT, compose_config

PROMPT = "Every effort moves you"
# conf/model/tiny.yaml at a 32-token context.
TINY = {"vocab_size": 50257, "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.1, "qkv_bias": False}


def run_generate(capsys, *overrides, stdin=None):
    cfg = compose_config(*overrides, config="generate")
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        generate_py.run(cfg)
    except Exception as err:
        # Hydra's instantiate wraps the UserError of a config constructor; the entry point unwraps it too.
        raise find_user_error(err) or err
    finally:
        sys.stdin = sys.__stdin__
    return capsys.readouterr().out


def expected_text(model, prompt=PROMPT, new=50, seed=123, **decoding):
    torch.manual_seed(seed)
    ids = generate(model.eval(), text_to_token_ids(prompt), new, decoding=DecodingConfig(**decoding))
    return token_ids_to_text(ids) + "\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(3)
    model = GPTModel(TINY)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    # What a Lightning checkpoint of GPTLitModule holds, as far as generation reads it.
    torch.save({"state_dict": state, "hyper_parameters": {"model": model.cfg.to_dict()}}, folder / "last.ckpt")
    save_book_pth(model, folder / "model.pth")
    hf = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=50257))
    hf.save_pretrained(folder / "gpt2-local")
    return folder, model


def test_ckpt_greedy(capsys, files):
    folder, model = files
    out = run_generate(capsys, f"ckpt_path={folder / 'last.ckpt'}", f"prompt={PROMPT}", "max_new_tokens=50")
    assert out == expected_text(model)


def test_pth_with_model_and_sampling(capsys, files):
    folder, model = files
    out = run_generate(
        capsys, f"ckpt_path={folder / 'model.pth'}", "model=tiny", "decoding=sample", "decoding.temperature=1.4", "decoding.top_k=25",
        "max_new_tokens=15",
    )
    assert out == expected_text(model, new=15, temperature=1.4, top_k=25)


def test_pretrained_folder_with_top_p_and_seed(capsys, files):
    folder, _ = files
    out = run_generate(capsys, f"pretrained={folder / 'gpt2-local'}", "decoding.temperature=0.8", "decoding.top_p=0.9",
                       "seed=7")
    ours = model_from_weights(read_weights(str(folder / "gpt2-local")))
    assert out == expected_text(ours, seed=7, temperature=0.8, top_p=0.9)
    sampled = run_generate(
        capsys, f"pretrained={folder / 'gpt2-local'}", "decoding=sample", "decoding.top_p=0.9", "seed=7", "max_new_tokens=15"
    )
    assert sampled == expected_text(ours, new=15, seed=7, temperature=1.4, top_k=25, top_p=0.9)


def test_interactive_reads_prompts_until_eof(capsys, files):
    folder, model = files
    out = run_generate(capsys, f"ckpt_path={folder / 'last.ckpt'}", "interactive=true", "max_new_tokens=5", stdin="Hello\n\nEvery effort moves you\n")
    assert out == expected_text(model, "Hello", 5) + token_ids_to_text(generate(model, text_to_token_ids(PROMPT), 5)) + "\n"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["ckpt_path={folder}/model.pth"], r"model\.pth holds weights without a model config; .*model=tiny data\.context_length=32"),
        (["ckpt_path={folder}/missing.ckpt"], r"missing\.ckpt does not exist"),
        (["ckpt_path={folder}/model.pth", "model=gpt124m"], r"tok_emb\.weight is \[50257, 32\] in the file but \[50257, 768\] in the model"),
        (["ckpt_path={folder}/last.ckpt", "pretrained=gpt2"], r"pass exactly one of ckpt_path"),
        ([], r"pass exactly one of ckpt_path"),
        (["pretrained=gpt-5"], r"gpt-5 is neither a GPT-2 name"),
        (["ckpt_path={folder}/last.ckpt", "max_new_tokens=-2"], r"max_new_tokens must be an integer >= 0"),
        (["ckpt_path={folder}/last.ckpt", "prompt=''"], r"the prompt is empty"),
        (["ckpt_path={folder}/last.ckpt", "decoding.top_p=1.5"], r"decoding\.top_p must be in \(0, 1\]"),
        # Filters on greedy decoding would be ignored without a word.
        (["ckpt_path={folder}/last.ckpt", "decoding.top_p=0.9"], r"only act when sampling, but decoding\.temperature is 0"),
        (["ckpt_path={folder}/last.ckpt", "decoding.top_k=5"], r"only act when sampling"),
    ],
)
def test_user_errors(capsys, files, overrides, message):
    folder, _ = files
    with pytest.raises(UserError, match=message):
        run_generate(capsys, *(o.format(folder=folder) for o in overrides))


def cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "generate.py", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def test_cli_streams_and_warns_in_one_line_about_a_long_prompt(files):
    folder, _ = files
    long_prompt = " ".join(["word"] * 70)  # 70 tokens, the local GPT-2 holds 64
    result = cli(f"pretrained={folder / 'gpt2-local'}", f"prompt='{long_prompt}'", "max_new_tokens=5")
    assert result.returncode == 0, result.stderr
    ours = model_from_weights(read_weights(str(folder / "gpt2-local")))
    with pytest.warns(UserWarning, match="the prompt has 70 tokens"):
        expected = token_ids_to_text(generate(ours, text_to_token_ids(long_prompt), 5)) + "\n"
    assert result.stdout == expected
    assert "warning: the prompt has 70 tokens but the context holds 64; only its last 64 tokens are seen by the model\n" in result.stderr


def test_cli_bad_value_is_one_line_and_exit_2(files):
    folder, _ = files
    result = cli(f"ckpt_path={folder / 'last.ckpt'}", "decoding.temperature=-1")
    assert result.returncode == 2
    assert result.stderr == "error: decoding.temperature must be >= 0 (0 = greedy), got -1\n"


@pytest.mark.parametrize("prompt", ["Hello, world", "It's a prompt"])
def test_a_sentence_as_prompt_is_one_line_naming_the_quoting_and_prompt_file(files, prompt):
    folder, _ = files
    result = cli(f"ckpt_path={folder / 'last.ckpt'}", f"prompt={prompt}")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: prompt={prompt}: Hydra ") and result.stderr.count("\n") == 1
    assert "prompt_file=FILE" in result.stderr


def test_prompt_file_and_stdin_take_any_text(files, tmp_path):
    folder, model = files
    prompt = 'Hello, world: "it\'s" here'
    (tmp_path / "prompt.txt").write_text(prompt + "\n", encoding="utf-8")
    expected = expected_text(model, prompt=prompt, new=5)
    from_file = cli(f"ckpt_path={folder / 'last.ckpt'}", f"prompt_file={tmp_path / 'prompt.txt'}", "max_new_tokens=5")
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout == expected
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    from_stdin = subprocess.run([sys.executable, "generate.py", f"ckpt_path={folder / 'last.ckpt'}", "prompt_file=-",
                                 "max_new_tokens=5"], cwd=ROOT, input=prompt, capture_output=True, text=True, env=env)
    assert from_stdin.stdout == expected
    # The quoting the error line advises works too.
    quoted = cli(f"ckpt_path={folder / 'last.ckpt'}", 'prompt="Hello, world"', "max_new_tokens=5")
    assert quoted.stdout == expected_text(model, prompt="Hello, world", new=5)


def test_stream_false_prints_the_completion_in_one_write(files):
    folder, model = files
    cfg = compose_config(f"ckpt_path={folder / 'last.ckpt'}", "max_new_tokens=8", "stream=false", config="generate")
    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    decoding = DecodingConfig()
    torch.manual_seed(cfg.seed)
    generate_py.complete(generate_py.load_model(cfg)[0].eval(), cfg.prompt, cfg, decoding, out=Recorder())
    # The prompt, the whole completion, the newline: three writes, even with PYTHONUNBUFFERED set.
    assert len([w for w in writes if w]) == 3 and "".join(writes) == expected_text(model, new=8)
