"""Bad input caught early with one line, safe loading, atomic writes, non-finite losses."""

import os
import subprocess
import sys

import pytest
import torch

from gptlit.cli.build import build
from gptlit.cli.command_line import check_group_choices
from gptlit.cli.user_errors import exit_on_user_error
from gptlit.cli.override_keys import check_keys
from gptlit.errors import UserError
from gptlit.files import atomic_write
from gptlit.training.checkpoint_io import SafeCheckpointIO
from gptlit.training.module import GPTLitModule
from gptlit.training.nonfinite import NonFiniteLossError
from gptlit.weights.io import read_checkpoint

from ..conftest import ROOT
from ..training_parts import NonFiniteLoss


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
        (["model=gpt3"], "error: unknown model=gpt3; choose one of: gpt124m, gpt1558m, gpt355m, gpt774m, llama3_2_1b, "
                         "llama3_tiny, qwen3_0_6b, qwen3_124m, qwen3_tiny, speedrun_20m, tiny"),
        (["-m", "model=tiny,huge"], "error: unknown model=huge; choose one of"),
        (["+experiment=book_ch6"], "error: unknown experiment=book_ch6; choose one of: book_appendix_d, book_ch5, "
                                   "gpt2_124m_fineweb, gutenberg, speedrun, tinystories"),
        (["decoding=beam"], "error: unknown decoding=beam; choose one of: greedy, sample"),
    ],
)
def test_unknown_group_option_is_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        check_group_choices(ROOT / "conf", argv)
    assert exit_info.value.code == 2
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


def fit_with_nonfinite_step(train_cfg, poison, *overrides):
    datamodule, module, trainer = build(train_cfg("trainer.max_steps=3", "trainer.limit_val_batches=0",
                                                  "callbacks.export_weights=null", *overrides))
    trainer.callbacks.append(poison)
    trainer.fit(module, datamodule=datamodule)
    return module, trainer


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_before_updating_the_weights(train_cfg, value):
    poison = NonFiniteLoss(2, value=value)
    with pytest.raises(NonFiniteLossError, match=r"training loss is (nan|inf) at step 2 \(epoch 1, batch 2\)"):
        fit_with_nonfinite_step(train_cfg, poison)
    assert all(torch.equal(poison.before[k], poison.after[k]) for k in poison.before)


@pytest.mark.parametrize("fused", ["true", "null"])  # the device-side skip of fused AdamW, and the host-side one
def test_non_finite_loss_skips_the_update(train_cfg, capsys, fused):
    poison = NonFiniteLoss(2)
    module, trainer = fit_with_nonfinite_step(train_cfg, poison, "module.on_nonfinite=skip", f"optimizer.fused={fused}")
    assert trainer.global_step == 3
    assert all(torch.equal(poison.before[k], poison.after[k]) for k in poison.before)
    optimizer_steps = {int(state["step"]) for state in trainer.optimizers[0].state.values()}
    assert optimizer_steps == {2}  # AdamW's own step count left the skipped step out too
    assert module.tokens_seen == 2 * 2 * 32
    out = capsys.readouterr().out
    assert out.count("batch skipped") == 1 and "warning: training loss is nan at step 2 (epoch 1, batch 2)" in out


class FakeTrainer:
    world_size = 1
    global_step = 0
    current_epoch = 0


@pytest.mark.gpu
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_training_step_never_makes_the_host_wait_for_the_gpu(tiny_cfg, monkeypatch, policy):
    # While torch's sync debug mode is "error", anything that makes the host wait for the GPU (bool(), .item(),
    # a blocking copy back) raises.
    module = GPTLitModule(tiny_cfg, on_nonfinite=policy).cuda()
    monkeypatch.setattr(GPTLitModule, "trainer", FakeTrainer(), raising=False)
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    optimizer = torch.optim.AdamW(module.parameters(), fused=True)
    batch = (torch.zeros(2, 8, dtype=torch.long, device="cuda"), torch.ones(2, 8, dtype=torch.long, device="cuda"))

    def step():
        module.training_step(batch, 0).backward()
        module.on_before_optimizer_step(optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the first step creates AdamW's state, copying its step counters to the GPU
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


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

    big = GPTModel({"context_length": 32, "emb_dim": 64, "n_heads": 2, "n_layers": 2})
    # What a training checkpoint holds, as far as the checks before resuming read it.
    torch.save({"state_dict": {f"model.{k}": v for k, v in big.state_dict().items()}, "optimizer_states": [],
                "hyper_parameters": {"model": big.cfg.to_dict()}}, tmp_path / "big.ckpt")
    run_dir = tmp_path / "outputs" / "run"
    result = run_train(f"data.path={verdict_path}", "data.context_length=32", f"ckpt_path={tmp_path / 'big.ckpt'}",
                       f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {tmp_path / 'big.ckpt'} does not fit the model")
    assert "tok_emb.weight is [50257, 64] in the file but [50257, 32] in the model" in line
    assert "the file fits model.vocab_size=50257 model.emb_dim=64 model.n_layers=2" in line
    assert not run_dir.exists()


def run_script(script, *args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@pytest.mark.parametrize(
    "script, args, message",
    [
        pytest.param("train.py", ["trainer=gpu"], "error: trainer.accelerator=gpu asks for a GPU, but torch sees no "
                     "GPU on this machine (neither CUDA nor MPS; a CPU-only torch build sees none either); train on "
                     "the CPU with trainer=cpu, or use the default trainer, which picks the device this machine has",
                     marks=pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(),
                                              reason="this machine has a GPU")),
        ("train.py", ["trainer=ddp", "trainer.strategy=fsdp"], "error: trainer.strategy=fsdp is Lightning's first "
         "FSDP, which gptlit does not train with; use trainer=fsdp (FSDP2, gptlit.training.fsdp.FullyShardedStrategy)"),
        ("train.py", ["trainer.max_epochs=abc"], "error: trainer.max_epochs must be an integer, -1 for no limit, "
         "got 'abc'"),
        ("train.py", ["trainer.val_check_interval=x"], "error: trainer.val_check_interval must be a number of batches "
         "or steps (an integer) or a fraction (0.0 to 1.0), got 'x'"),
        pytest.param("generate.py", ["device=cuda", "pretrained=gpt2"], "error: device=cuda was asked for, but torch "
                     "sees no CUDA GPU on this machine (a CPU-only torch build sees none either); use device=auto or "
                     "device=cpu", marks=NO_CUDA),
        ("generate.py", ["promt=hi"], "error: generate.py has no setting promt; did you mean prompt=hi?"),
        ("generate.py", ["+promt=hi"], "error: +promt=hi adds a setting that generate.py never reads, so it would "
         "change nothing; did you mean prompt=hi?"),
    ],
)
def test_unusable_command_lines_are_one_line_exit_2_and_leave_nothing(tmp_path, verdict_path, script, args, message):
    run_dir = tmp_path / "outputs" / "run"
    extra = ["model=tiny", f"data.path={verdict_path}", f"hydra.run.dir={run_dir}"] if script == "train.py" else []
    result = run_script(script, *extra, *args, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (2, message + "\n")
    assert list(tmp_path.iterdir()) == []  # no run directory, nothing in the working directory


@pytest.mark.parametrize(
    "config, argv, message",
    [
        ("train", ["lr=1e-3"], "train.py has no setting lr; did you mean optimizer.lr=1e-3?"),
        ("train", ["+promt=hi"], "+promt=hi adds a setting that train.py never reads, so it would change nothing; "
         "python train.py --help lists the settings"),
        ("train", ["model=tiny", "model.n_head=4"], "train.py has no setting model.n_head; did you mean model.n_heads=4?"),
        ("train", ["-m", "trainer.max_epoch=1,2"], "train.py has no setting trainer.max_epoch; did you mean "
         "trainer.max_epochs=1,2?"),
        ("train", ["+seed=1"], "seed is a setting already; write seed=1, without the +"),
        ("train", ["~loger"], "~loger: train.py has no setting loger to remove; did you mean logger?"),
        ("train", ["trainer.strategy=ddp"], "train.py has no setting trainer.strategy; to hand trainer's constructor "
         "an argument its config does not list, write +trainer.strategy=ddp"),
        ("train", ["callbacks.sample_text.decoding.top_k=5"], "callbacks.sample_text.decoding takes its value from "
         "decoding; write decoding.top_k=5"),
        ("generate", ["decoding=sample", "decoding.topk=3"], "generate.py has no setting decoding.topk; did you mean "
         "decoding.top_k=3?"),
        ("generate", ["max_tokens=3"], "generate.py has no setting max_tokens; did you mean max_new_tokens=3?"),
    ],
)
def test_mistyped_keys_name_the_key_meant(config, argv, message):
    with pytest.raises(UserError) as err:
        check_keys(ROOT / "conf", config, argv)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "config, argv",
    [
        ("train", ["model=tiny", "+trainer.limit_train_batches=6", "trainer.max_epochs=2", "hydra.run.dir=x"]),
        ("train", ["-m", "model=tiny,gpt124m", "optimizer.lr=1e-4,1e-3", "+experiment=book_ch5", "~logger"]),
        ("train", ["--cfg", "job", "callbacks.loss_plot=null", "data=textfiles", "data.tokenize_workers=1"]),
        ("generate", ["ckpt_path=x.ckpt", "model=tiny", "model.n_heads=4", "decoding.top_p=0.9", "prompt=a=b"]),
    ],
)
def test_valid_keys_pass(config, argv):
    check_keys(ROOT / "conf", config, argv)
