import logging
import os
import stat

import pytest
import torch
from llms_from_scratch.ch04 import GPTModel as BookGPTModel
from safetensors import safe_open

from gptlit.errors import UserError
from gptlit.core.model import GPTConfig, GPTModel
from gptlit.training.module import GPTLitModule
from gptlit.weights.io import (
    fitting_model,
    model_from_checkpoint,
    model_from_weights,
    read_weights,
    save_book_pth,
    save_safetensors,
)
from gptlit.cli.build import fit as train


def logits(model, n=10, vocab=50257):
    idx = torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(idx)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture
def trained(tiny_run):
    """A short tiny run: its run directory holds the checkpoints and the exported weights."""
    return tiny_run


def test_training_exports_model_safetensors_and_pth(trained):
    run_dir, model = trained
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "model.pth").is_file()
    assert not list(run_dir.glob("*.tmp"))
    # The safetensors file carries its config; the .ckpt too; both give the trained model back.
    for source in (run_dir / "model.safetensors", run_dir / "checkpoints" / "last.ckpt"):
        loaded = model_from_checkpoint(source)
        assert loaded.cfg == model.cfg
        assert_same_weights(loaded, model)


def test_exported_pth_loads_strictly_into_the_books_gptmodel(trained):
    run_dir, model = trained
    book = BookGPTModel(model.cfg.to_dict())
    book.load_state_dict(torch.load(run_dir / "model.pth", weights_only=True))  # strict
    torch.testing.assert_close(logits(book), logits(model), atol=1e-5, rtol=1e-5)


def test_the_books_strict_load_needs_the_mask_buffers(tiny_cfg):
    # Why model.pth carries trf_blocks.N.att.mask: without it the book's strict load fails.
    book = BookGPTModel(tiny_cfg)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*att\.mask"):
        book.load_state_dict(GPTModel(tiny_cfg).state_dict())


def test_pth_without_config_needs_model_and_names_the_fitting_one(tmp_path, tiny_cfg):
    torch.save(BookGPTModel(tiny_cfg).state_dict(), tmp_path / "model.pth")
    weights = read_weights(tmp_path / "model.pth")
    assert weights.config is None and not any(k.endswith("mask") for k in weights.state)
    with pytest.raises(UserError, match=r"without a model config; .*model=tiny data\.context_length=64"):
        model_from_weights(weights)
    model = model_from_weights(weights, tiny_cfg)
    book = BookGPTModel(tiny_cfg)
    book.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    torch.testing.assert_close(logits(model), logits(book), atol=1e-5, rtol=1e-5)


def test_shape_mismatch_names_tensors_shapes_and_fitting_config(tmp_path, tiny_cfg):
    save_safetensors(GPTModel(tiny_cfg), tmp_path / "model.safetensors")
    weights = read_weights(tmp_path / "model.safetensors")
    with pytest.raises(UserError) as err:
        model_from_weights(weights.__class__(weights.state, None, weights.source), {**tiny_cfg, "emb_dim": 64})
    message = str(err.value)
    assert "tok_emb.weight is [50257, 32] in the file but [50257, 64] in the model" in message
    assert "the file fits model=tiny data.context_length=64" in message
    assert "\n" not in message


def test_fitting_model_names_gpt124m_and_the_bias_override():
    with torch.device("meta"):
        state = GPTModel({**GPTConfig().to_dict(), "qkv_bias": True}).state_dict()
    assert fitting_model(state) == "model=gpt124m data.context_length=1024 model.qkv_bias=true"


def test_unknown_sizes_are_spelled_out(tiny_cfg):
    state = GPTModel({**tiny_cfg, "emb_dim": 48, "n_layers": 3}).state_dict()
    assert fitting_model(state).startswith("model.vocab_size=50257 model.emb_dim=48 model.n_layers=3 model.qkv_bias=false")


@pytest.mark.parametrize("tied", [True, False])
def test_a_tied_head_stays_tied_through_model_safetensors(tmp_path, tiny_cfg, tied):
    model = GPTModel(tiny_cfg)
    if tied:
        model.out_head.weight = model.tok_emb.weight
    path = save_safetensors(model, tmp_path / "model.safetensors")
    loaded = model_from_checkpoint(path)
    assert (loaded.out_head.weight is loaded.tok_emb.weight) == tied
    assert_same_weights(loaded, model)
    with safe_open(path, "pt") as f:
        assert ("out_head.weight" in f.keys()) != tied  # a tied head is stored once


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"nothing\.pth does not exist; pass a \.ckpt/\.pth/\.pt/\.safetensors file"):
        read_weights(tmp_path / "nothing.pth")


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_objects_are_never_loaded(tmp_path, capsys):
    torch.save({"weight": torch.zeros(1), "evil": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="holds more than tensors and plain data"):
        read_weights(tmp_path / "evil.pth")
    assert "unpickled!" not in capsys.readouterr().out


def test_truncated_and_foreign_files_are_user_errors(tmp_path, tiny_cfg):
    torch.save(GPTModel(tiny_cfg).state_dict(), tmp_path / "model.pth")
    data = (tmp_path / "model.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or not a PyTorch checkpoint"):
        read_weights(tmp_path / "cut.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        read_weights(tmp_path / "bad.safetensors")
    torch.save({"epochs": 3}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a state dict of tensors"):
        read_weights(tmp_path / "other.pt")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".ckpt"])
def test_init_from_each_file_kind(tmp_path, tiny_cfg, suffix):
    source = GPTModel(tiny_cfg)
    path = tmp_path / f"model{suffix}"
    if suffix == ".pth":
        save_book_pth(source, path)
    elif suffix == ".safetensors":
        save_safetensors(source, path)
    else:
        state = {f"model.{k}": v for k, v in source.state_dict().items()}
        torch.save({"state_dict": state, "hyper_parameters": {"model": source.cfg.to_dict()}}, path)
    module = GPTLitModule(tiny_cfg, init_from=str(path))
    assert_same_weights(module.model, source)


def test_init_from_crops_the_position_table_and_refuses_a_longer_context(tmp_path, tiny_cfg, caplog):
    source = GPTModel(tiny_cfg)  # 64 positions
    save_safetensors(source, tmp_path / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="gptlit.weights.io"):
        module = GPTLitModule({**tiny_cfg, "context_length": 16}, init_from=str(tmp_path / "model.safetensors"))
    assert "Using the first 16 of the 64 positions" in caplog.text
    assert torch.equal(module.model.pos_emb.weight, source.pos_emb.weight[:16])
    with pytest.raises(UserError, match=r"context_length 128 exceeds the 64 positions of .*use data\.context_length=64 or less"):
        GPTLitModule({**tiny_cfg, "context_length": 128}, init_from=str(tmp_path / "model.safetensors"))


def test_init_from_a_shape_mismatch_is_refused(tmp_path, tiny_cfg):
    save_safetensors(GPTModel(tiny_cfg), tmp_path / "model.safetensors")
    with pytest.raises(UserError, match=r"trf_blocks\.0\.att\.W_query\.weight is \[32, 32\] in the file but \[64, 64\]"):
        GPTLitModule({**tiny_cfg, "emb_dim": 64}, init_from=str(tmp_path / "model.safetensors"))


def test_train_py_init_from_starts_from_the_weights(tmp_path, train_cfg, tiny_cfg):
    source = GPTModel({**tiny_cfg, "n_heads": 2, "context_length": 32})
    save_book_pth(source, tmp_path / "start.pth")
    cfg = train_cfg(f"init_from={tmp_path / 'start.pth'}", "trainer.max_steps=0", run_dir=tmp_path / "run")
    trainer = train(cfg)
    assert_same_weights(trainer.lightning_module.model, source)


def test_resume_from_checkpoint_continues_the_run(tmp_path, train_cfg):
    common = ["model.drop_rate=0", "data.shuffle=false", "+trainer.limit_train_batches=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=2", "callbacks.export_weights=null"]
    straight = train(train_cfg(*common, "trainer.max_epochs=2", run_dir=tmp_path / "a"))
    train(train_cfg(*common, "trainer.max_epochs=1", run_dir=tmp_path / "b"))
    resumed = train(
        train_cfg(*common, "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}", run_dir=tmp_path / "c")
    )
    assert resumed.global_step == straight.global_step == 6
    # Equal weights only if the optimizer state and the loop position came back with the checkpoint.
    assert_same_weights(resumed.lightning_module.model, straight.lightning_module.model)
    assert resumed.lightning_module.history == straight.lightning_module.history


def test_exported_weights_get_the_umasks_permissions_like_every_other_output(tmp_path, tiny_cfg):
    # safetensors' save_file makes its file owner-only; every other output is readable as the umask allows.
    model = GPTModel(tiny_cfg)
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (save_safetensors(model, tmp_path / "model.safetensors"), save_book_pth(model, tmp_path / "model.pth")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
