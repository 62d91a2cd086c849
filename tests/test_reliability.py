"""Bad input caught early with one line, safe loading, atomic writes, non-finite losses."""

import os
import pickle
import subprocess
import sys

import pytest
import torch

from gptlit.app.cli import check_group_choices, exit_on_user_error
from gptlit.errors import UserError
from gptlit.files import atomic_write
from gptlit.training.checkpoint_io import SafeCheckpointIO
from gptlit.training.module import GPTLitModule, NonFiniteLossError
from gptlit.weights.io import read_checkpoint

from .conftest import ROOT


class RunsCode:
    """A pickle that would create a file when unpickled, as a hostile checkpoint would run code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, path)
    return path, marker


def test_hostile_pickle_is_refused_without_running(tmp_path):
    path, marker = hostile_checkpoint(tmp_path)
    with pytest.raises(UserError, match="holds more than tensors and plain data"):
        read_checkpoint(path)
    with pytest.raises(UserError):
        SafeCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, good)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(UserError, match="truncated or not a PyTorch checkpoint"):
        read_checkpoint(bad)
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(UserError, match="truncated or not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "text.ckpt")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"good")
    with pytest.raises(OSError):
        with atomic_write(path) as f:
            f.write(b"half")
            raise OSError("No space left on device")
    assert path.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["last.ckpt"]
    with atomic_write(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["last.ckpt"]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)


def test_safe_checkpoint_io_round_trip(tmp_path):
    io = SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.arange(3)}, "epoch": 1}, tmp_path / "a" / "x.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "a" / "x.ckpt")["state_dict"]["w"], torch.arange(3))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["model=gpt3"], "error: unknown model=gpt3; choose one of: gpt124m, gpt1558m, gpt355m, gpt774m, tiny"),
        (["-m", "model=tiny,huge"], "error: unknown model=huge; choose one of"),
        (["+experiment=book_ch6"], "error: unknown experiment=book_ch6; choose one of: book_appendix_d, book_ch5, "
                                   "gpt2_124m_fineweb, gutenberg, tinystories"),
        (["decoding=beam"], "error: unknown decoding=beam; choose one of: greedy, sample"),
    ],
)
def test_unknown_group_option_is_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        check_group_choices(ROOT / "conf", argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


@pytest.mark.parametrize(
    "arg, message",
    [
        ("model.init_from=gpt2", "error: model.init_from is now init_from: a starting point is a training setting"),
        ("module.eval_freq=5", "error: module.eval_freq is now callbacks.book_schedule.eval_freq: the book's schedule"),
    ],
)
def test_moved_keys_name_their_new_place(capsys, arg, message):
    with pytest.raises(SystemExit):
        check_group_choices(ROOT / "conf", [arg])
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_known_options_and_plain_values_pass():
    check_group_choices(ROOT / "conf", ["model=tiny", "data.path=x=y", "optimizer.lr=1e-3", "trainer=cpu",
                                        "model.n_heads=2", "seed=1"])


def test_user_error_removes_only_a_run_dir_hydra_alone_wrote(tmp_path, capsys):
    fresh = tmp_path / "2026-01-01" / "10-00-00"
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / "train.log").write_text("")
    with pytest.raises(SystemExit):
        with exit_on_user_error(run_dir=fresh):
            raise UserError("data.path x does not exist")
    assert not fresh.exists() and not fresh.parent.exists()
    assert capsys.readouterr().err == "error: data.path x does not exist\n"

    used = tmp_path / "used"
    (used / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit):
        with exit_on_user_error(run_dir=used):
            raise UserError("bad")
    assert (used / "checkpoints").is_dir()


def test_other_errors_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        with exit_on_user_error():
            1 / 0


class FakeTrainer:
    world_size = 1
    is_global_zero = True


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_or_skips(tiny_cfg, value, monkeypatch):
    module = GPTLitModule(tiny_cfg)
    monkeypatch.setattr(GPTLitModule, "trainer", FakeTrainer(), raising=False)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    printed = []
    monkeypatch.setattr(module, "print", lambda *a, **k: printed.append(" ".join(map(str, a))))
    with torch.no_grad():
        module.model.out_head.weight.fill_(value)
    batch = (torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(NonFiniteLossError, match=r"training loss is (nan|inf) at step 1 \(epoch 1, batch 1\)"):
        module.training_step(batch, 0)
    module.on_nonfinite = "skip"
    assert module.training_step(batch, 0) is None
    assert printed and "batch skipped" in printed[0]


def test_bad_nonfinite_policy(tiny_cfg):
    with pytest.raises(UserError, match="module.on_nonfinite must be stop or skip"):
        GPTLitModule(tiny_cfg, on_nonfinite="ignore")


def run_train(*args):
    return subprocess.run([sys.executable, "train.py", "model=tiny", "trainer.accelerator=cpu", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_train_refuses_a_hostile_checkpoint_before_writing_anything(tmp_path, verdict_path):
    path, marker = hostile_checkpoint(tmp_path)
    run_dir = tmp_path / "outputs" / "run"
    result = run_train(f"data.path={verdict_path}", f"ckpt_path={path}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: checkpoint {path} holds more than tensors and plain data")
    assert "Traceback" not in result.stderr
    assert not marker.exists() and not run_dir.exists()


def test_train_reports_bad_data_in_one_line_and_leaves_no_run_dir(tmp_path):
    (tmp_path / "short.txt").write_text("Every effort moves you. " * 120)
    run_dir = tmp_path / "outputs" / "run"
    result = run_train(f"data.path={tmp_path / 'short.txt'}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: the val split of")
    assert not run_dir.exists()


def test_resuming_from_another_model_size_names_the_fitting_config(tmp_path, verdict_path):
    from gptlit.core.model import GPTModel
    from gptlit.weights.io import save_book_pth

    save_book_pth(GPTModel({"context_length": 32, "emb_dim": 64, "n_heads": 2, "n_layers": 2}), tmp_path / "big.pth")
    run_dir = tmp_path / "outputs" / "run"
    result = run_train(f"data.path={verdict_path}", "data.context_length=32", f"ckpt_path={tmp_path / 'big.pth'}",
                       f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {tmp_path / 'big.pth'} does not fit the model")
    assert "tok_emb.weight is [50257, 64] in the file but [50257, 32] in the model" in line
    assert "the file fits model.vocab_size=50257 model.emb_dim=64 model.n_layers=2" in line
    assert not run_dir.exists()
