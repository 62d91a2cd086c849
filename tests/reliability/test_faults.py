"""Faults lose nothing: every file gptlit writes meets a full disk and a kill mid-write, every file a user points
gptlit at is damaged on disk, and resumes meet changed settings. (The fault harness: tests/faults.py; kill -9
mid-run and resume bit for bit: tests/training/test_resume.py.)"""

from __future__ import annotations

import errno
import math
import shutil
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel

from gptlit.cli import generate as generate_py
from gptlit.cli.build import build, fit
from gptlit.cli.command_line import check_group_choices
from gptlit.cli.user_errors import exit_on_user_error
from gptlit.core.model import GPTModel
from gptlit.data import token_cache
from gptlit.data.text import TokenWindows, download
from gptlit.data.textfiles import TextFilesDataModule
from gptlit.data.token_cache import DamagedTokenFile, TokenFile, read_header, write_token_file
from gptlit.errors import UserError
from gptlit.files import DiskFull, atomic_write, human_bytes
from gptlit.training.checkpoint_io import SafeCheckpointIO
from gptlit.training.callbacks.last_checkpoint import LastCheckpoint
from gptlit.training.callbacks.loss_plot import plot_losses
from gptlit.weights.io import model_from_checkpoint, read_weights, save_book_pth, save_safetensors, tensor_bytes

from ..conftest import ROOT, compose_config, compose_train
from ..faults import DAMAGES, WriteFaults, damage, run_script, small_disk

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow

TINY = {"vocab_size": 50257, "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.1,
        "qkv_bias": False}


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# --- a full disk, on every write path -------------------------------------------------------------------------

def write_checkpoint(folder: Path, version: int) -> Path:
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((1000,), float(version))}},
                                       folder / "last.ckpt")
    return folder / "last.ckpt"


def write_safetensors(folder: Path, version: int) -> Path:
    torch.manual_seed(version)
    return save_safetensors(GPTModel(TINY), folder / "model.safetensors")


def write_pth(folder: Path, version: int) -> Path:
    torch.manual_seed(version)
    return save_book_pth(GPTModel(TINY), folder / "model.pth")


def write_plot(folder: Path, version: int) -> Path:
    return plot_losses([1, 2], [64, 128], [9.0, 8.0 - version], [9.5, 9.0], folder / "loss-plot")[0]


def write_tokens(folder: Path, version: int) -> Path:
    write_token_file(folder / "corpus.tokens", [np.arange(500 + version), np.arange(7)], vocab_size=50257)
    return folder / "corpus.tokens"


def write_download(folder: Path, version: int) -> Path:
    source = folder.parent / f"served-{version}.txt"
    source.write_text(f"version {version} " * 100)
    download(source.as_uri(), folder / "the-verdict.txt")
    return folder / "the-verdict.txt"


# model.safetensors is written by safetensors' own (Rust) writer, out of WriteFaults' reach: a real disk below.
WRITERS = {"last.ckpt": write_checkpoint, "model.pth": write_pth,
           "loss-plot.png": write_plot, "corpus.tokens": write_tokens, "the-verdict.txt": write_download}


@pytest.mark.parametrize("name", WRITERS)
def test_a_full_disk_is_one_line_and_the_previous_file_stays(tmp_path, name):
    folder = tmp_path / "out"
    folder.mkdir()
    path = WRITERS[name](folder, 1)
    before = path.read_bytes()
    with WriteFaults().add(name, "enospc"), pytest.raises(DiskFull) as caught:
        WRITERS[name](folder, 2)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"no space left to write {path} (it needs ")
    assert f"the previous {name} is intact" in message
    assert path.read_bytes() == before
    assert temporaries(tmp_path) == []


def test_a_full_disk_met_by_the_safetensors_writer_is_one_line_and_the_previous_file_stays(tmp_path):
    """A real filesystem of 20 MB: the first model.safetensors (13 MB) fits, the second cannot beside it."""
    with small_disk(tmp_path / "disk", 20) as disk:
        path = write_safetensors(disk, 1)
        before = path.read_bytes()
        with pytest.raises(DiskFull) as caught:
            write_safetensors(disk, 2)
        message = str(caught.value)
        assert "\n" not in message
        size = human_bytes(tensor_bytes(GPTModel(TINY).state_dict()))
        assert message.startswith(f"no space left to write {path} (it needs about {size}, ")
        assert "the previous model.safetensors is intact" in message
        assert path.read_bytes() == before
        assert temporaries(disk) == []


def test_a_full_disk_on_a_first_write_leaves_nothing(tmp_path):
    with WriteFaults().add("last.ckpt", "enospc"), pytest.raises(DiskFull, match=r"it needs about 4\.\d+ KB, .* are "
                                                                                 r"free\); nothing was left"):
        write_checkpoint(tmp_path, 1)
    assert list(tmp_path.iterdir()) == []


def test_a_write_killed_midway_keeps_the_old_file_and_the_next_write_sweeps_its_leftover(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    script = tmp_path / "writer.py"
    script.write_text("import sys\nfrom gptlit.files import atomic_write\n"
                      "with atomic_write(sys.argv[1]) as f:\n    f.write(b'new' * 1000)\n")
    killed = run_script(str(script), str(target), faults=["kill-during:data.bin"])
    assert killed.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old"
    assert len(temporaries(tmp_path)) == 1  # what kill -9 leaves: nothing ran after the signal
    # A temporary file of a process that still runs is not touched; one of a process that is gone is.
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # Named as atomic_write names them: .<name>.<pid>@<host>.<random>.tmp
        _, host_and_rest = temporaries(tmp_path)[0].removeprefix(".data.bin.").split("@", 1)
        live_tmp = tmp_path / f".data.bin.{alive.pid}@{host_and_rest.replace('.tmp', 'x.tmp')}"
        live_tmp.write_bytes(b"in progress")
        with atomic_write(target) as f:
            f.write(b"new")
        assert target.read_bytes() == b"new"
        assert temporaries(tmp_path) == [live_tmp.name]
    finally:
        alive.kill()
        alive.wait()


def test_a_run_on_a_full_disk_stops_in_one_line_and_keeps_its_last_checkpoint(tmp_path, verdict_path):
    """A real filesystem of 60 MB: the first last.ckpt (39 MB) fits, the second cannot while the first stays."""
    with small_disk(tmp_path / "disk", 60) as disk:
        run_dir = disk / "run"
        result = run_script("train.py", "model=tiny", "data.context_length=32", f"data.path={verdict_path}",
                            "trainer.max_epochs=2", "+trainer.limit_train_batches=2", "trainer.accelerator=cpu",
                            "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
                            f"hydra.run.dir={run_dir}")
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors == [result.stderr.strip().splitlines()[-1]]
        assert errors[0].startswith(f"error: no space left to write {run_dir}/checkpoints/last.ckpt (it needs about "
                                    "38.9 MB, ")  # the tensors' bytes; the file is 39.0 MB
        assert "the previous last.ckpt is intact" in errors[0]
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
        assert temporaries(disk) == []


def test_a_full_disk_met_by_a_loggers_write_is_one_line_too(capsys):
    """Writes that are not gptlit's own (TensorBoard's hparams.yaml, the CSV logger) meet a full disk too."""
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "run/tensorboard/hparams.yaml")
        except OSError:
            raise RuntimeError("the logger failed")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: no space left on the device to write run/tensorboard/hparams.yaml; the "
                                       "checkpoints written so far are intact. Free some space on that disk, or "
                                       "write elsewhere, and run again\n")


# --- last.ckpt at every epoch end, and on a cadence -----------------------------------------------------------

@pytest.mark.parametrize("cadence, steps", [
    ([], [5, 10]),
    (["callbacks.last_checkpoint.every_n_train_steps=2"], [2, 4, 5, 6, 8, 10]),
    (["callbacks.last_checkpoint.every_n_minutes=1e-9"], list(range(1, 11))),
])
def test_last_ckpt_is_written_at_each_epoch_end_and_on_the_cadence(tmp_path, monkeypatch, cadence, steps):
    saved = []
    save = SafeCheckpointIO.save_checkpoint

    def recording(self, checkpoint, path, storage_options=None):
        saved.append((Path(path).name, checkpoint["global_step"]))
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(SafeCheckpointIO, "save_checkpoint", recording)
    fit(compose_train(tmp_path, "trainer.max_epochs=2", "+trainer.limit_train_batches=5", "trainer.limit_val_batches=0",
                      "callbacks.best_checkpoint=null", "callbacks.export_weights=null", *cadence))
    assert [step for name, step in saved if name == "last.ckpt"] == steps


@pytest.mark.parametrize("kwargs, message", [
    ({"every_n_train_steps": 0}, "every_n_train_steps must be a positive integer or null, got 0"),
    ({"every_n_minutes": -1}, "every_n_minutes must be a positive number or null, got -1"),
])
def test_bad_cadence_is_a_user_error(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        LastCheckpoint(tmp_path, **kwargs)


# --- files damaged on disk, through every read path a user points at them ------------------------------------

@pytest.fixture(scope="module")
def run_files(tiny_run, tmp_path_factory):
    """What a training run writes that a user can point at later, and a transformers GPT-2 folder."""
    run_dir, _ = tiny_run
    hf = tmp_path_factory.mktemp("hf") / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=50257)).save_pretrained(hf)
    return {"last.ckpt": run_dir / "checkpoints" / "last.ckpt", "best.ckpt": run_dir / "checkpoints" / "best.ckpt",
            "model.safetensors": run_dir / "model.safetensors", "model.pth": run_dir / "model.pth",
            "gpt2/config.json": hf / "config.json", "gpt2/model.safetensors": hf / "model.safetensors"}


FILE_KINDS = ("last.ckpt", "best.ckpt", "model.safetensors", "model.pth", "gpt2/config.json", "gpt2/model.safetensors")


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", FILE_KINDS)
def test_a_damaged_weights_file_is_refused_in_one_line(tmp_path, run_files, kind, how):
    original = run_files[kind]
    if kind.startswith("gpt2/"):
        source = tmp_path / "gpt2"
        shutil.copytree(original.parent, source)
        damaged = source / original.name
    else:
        source = damaged = tmp_path / original.name
        shutil.copy(original, damaged)
    read_weights(source)  # the intact copy reads
    damage(damaged, how)
    with pytest.raises(UserError) as caught:
        read_weights(source)
    assert "\n" not in str(caught.value) and str(source) in str(caught.value)


def test_best_ckpt_is_weights_only_and_generate_reads_it(run_files, capsys):
    best, last = (torch.load(run_files[n], weights_only=True) for n in ("best.ckpt", "last.ckpt"))
    assert "optimizer_states" not in best and "optimizer_states" in last
    # AdamW keeps two tensors per weight: the weights-only file is about a third of last.ckpt.
    ratio = run_files["best.ckpt"].stat().st_size / run_files["last.ckpt"].stat().st_size
    assert 0.3 < ratio < 0.36
    model = model_from_checkpoint(run_files["best.ckpt"])
    state = {k.removeprefix("model."): v for k, v in best["state_dict"].items()}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    generate_py.run(compose_config(f"ckpt_path={run_files['best.ckpt']}", "max_new_tokens=3", config="generate"))
    assert capsys.readouterr().out.startswith("Every effort moves you")


# --- the token cache --------------------------------------------------------------------------------------------

@pytest.fixture
def corpus(tmp_path, verdict_text) -> Path:
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text(verdict_text[:3000], encoding="utf-8")
    (folder / "b.txt").write_text(verdict_text[3000:7000], encoding="utf-8")
    return folder


def textfiles(folder: Path, cache: Path) -> TextFilesDataModule:
    dm = TextFilesDataModule(path=str(folder), cache_dir=str(cache), context_length=16, tokenize_workers=1,
                             progress=False)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_token_file_header_carries_count_vocabulary_and_checksum(tmp_path):
    ids = [np.array([1, 2, 3], dtype=np.uint16), np.array([50000, 7], dtype=np.int64)]
    header = write_token_file(tmp_path / "t.tokens", ids, vocab_size=50257, separator=50256)
    tokens = np.array([1, 2, 3, 50256, 50000, 7], dtype="<u2")
    assert (header.count, header.vocab_size, header.crc32) == (6, 50257, zlib.crc32(tokens.tobytes()))
    assert read_header(tmp_path / "t.tokens", full_check=True) == header
    assert TokenFile(tmp_path / "t.tokens")[:].tolist() == tokens.tolist()


def test_ids_outside_the_vocabulary_are_never_written(tmp_path):
    with pytest.raises(ValueError, match="token id 50257 of document 1 is outside the vocabulary"):
        write_token_file(tmp_path / "t.tokens", [np.arange(5), np.array([50257])], vocab_size=50257)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_token_cache_is_rebuilt(corpus, tmp_path, capsys, how):
    first = textfiles(corpus, tmp_path / "cache")
    expected = first.token_path.read_bytes()
    damage(first.token_path, how)
    again = textfiles(corpus, tmp_path / "cache")
    assert again.token_path == first.token_path and again.token_path.read_bytes() == expected
    err = capsys.readouterr().err
    assert err.startswith(f"warning: token file {first.token_path} ") and err.endswith("; tokenizing the corpus again\n")
    assert err.count("\n") == 1


def test_damage_in_a_cache_too_large_to_checksum_is_refused_when_read(tmp_path, monkeypatch, capsys):
    path = tmp_path / "big.tokens"
    write_token_file(path, [np.arange(1000)], vocab_size=50257)
    damage(path, "overwrite-middle")  # 32 tokens of 0xffff from token 492
    with pytest.raises(DamagedTokenFile, match="checksum"):
        read_header(path)
    monkeypatch.setattr(token_cache, "FULL_CHECK_BYTES", 0)
    windows = TokenWindows(TokenFile(path), 16, 16)  # header and length agree: it opens
    assert windows[0][0].tolist() == list(range(16))
    # Read as training reads it, in a DataLoader worker: the entry point's one line, no traceback.
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        list(DataLoader(windows, batch_size=4, num_workers=1))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: token file {path} is damaged: token 492 is 65535, outside the vocabulary "
                                       "(50257); delete the file and run again to tokenize the corpus anew\n")


# --- resumes under changed settings, and files that cannot be resumed from -----------------------------------

def test_resume_refuses_a_model_config_that_differs_from_the_checkpoints(tmp_path, run_files):
    resume = f"ckpt_path={run_files['last.ckpt']}"
    build(compose_train(tmp_path, resume))  # the same settings build
    with pytest.raises(UserError) as caught:
        build(compose_train(tmp_path, resume, "model.n_heads=4", "model.drop_rate=0"))
    assert str(caught.value) == (
        f"{run_files['last.ckpt']} was trained with model.n_heads=2 model.drop_rate=0.1, this run asks for "
        "model.n_heads=4 model.drop_rate=0; a resume continues the same model: pass model.n_heads=2 "
        f"model.drop_rate=0.1, or start a new run from these weights with init_from={run_files['last.ckpt']}"
    )


@pytest.mark.parametrize("kind, message", [
    ("best.ckpt", "holds weights only (best.ckpt is saved so), without the optimizer state"),
    ("model.pth", "holds bare weights, not a training checkpoint"),
    ("model.safetensors", "holds exported weights, not a training checkpoint"),
])
def test_resume_refuses_files_without_a_training_state(tmp_path, run_files, kind, message):
    with pytest.raises(UserError) as caught:
        build(compose_train(tmp_path, f"ckpt_path={run_files[kind]}"))
    assert str(caught.value).startswith(f"{run_files[kind]} {message}")
    assert str(caught.value).endswith(f"start a new run from these weights with init_from={run_files[kind]}")


# --- weights no model can use ---------------------------------------------------------------------------------

def save_as(model: GPTModel, path: Path) -> Path:
    if path.suffix == ".safetensors":
        return save_safetensors(model, path)
    if path.suffix == ".pth":
        return save_book_pth(model, path)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": model.cfg.to_dict()}}, path)
    return path


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".ckpt"])
def test_non_finite_weights_are_refused_naming_the_first_bad_tensor(tmp_path, suffix, value):
    model = GPTModel(TINY)
    with torch.no_grad():
        model.trf_blocks[1].ff.layers[0].weight[3, 5] = value
        model.trf_blocks[1].ff.layers[2].weight[:2] = value
    path = save_as(model, tmp_path / f"weights{suffix}")
    with pytest.raises(UserError, match=rf"^{path}: tensor trf_blocks\.1\.ff\.layers\.0\.weight holds 1 NaN or "
                                        r"infinite value \(of 4096\); these weights are damaged"):
        read_weights(path)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_that_are_not_floating_point_are_refused(tmp_path, suffix, dtype):
    state = GPTModel(TINY).state_dict()
    state["tok_emb.weight"] = state["tok_emb.weight"].to(dtype)
    path = tmp_path / f"weights{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(UserError, match=rf"^{path}: tensor tok_emb\.weight holds {name} values; model weights must "
                                        r"be floating point"):
        read_weights(path)


def test_generate_refuses_nan_weights_in_one_line(tmp_path):
    model = GPTModel(TINY)
    with torch.no_grad():
        model.out_head.weight[7, 0] = math.nan
    path = save_safetensors(model, tmp_path / "nan.safetensors")
    result = run_script("generate.py", f"ckpt_path={path}", "decoding=sample")
    assert result.returncode == 2
    assert result.stderr == (f"error: {path}: tensor out_head.weight holds 1 NaN or infinite value (of 1608224); these "
                             "weights are damaged or come from a run that diverged: use an earlier checkpoint\n")


# --- configs ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["overwrite-middle", "overwrite-start", "not-yaml"])
def test_a_damaged_config_is_one_line(tmp_path, capsys, how):
    mine = tmp_path / "experiment" / "mine.yaml"
    mine.parent.mkdir()
    shutil.copy(ROOT / "conf" / "experiment" / "book_ch5.yaml", mine)
    argv = ["--config-dir", str(tmp_path), "+experiment=mine"]
    check_group_choices(ROOT / "conf", argv)  # a config folder of the user's own is a place to look for options
    if how == "not-yaml":
        mine.write_text("model:\n  emb_dim: [768, 1024\n")
    else:
        damage(mine, how)
    with pytest.raises(SystemExit) as exit_info:
        check_group_choices(ROOT / "conf", argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: config {mine} cannot be read (") and err.endswith("); repair or restore it\n")
    assert err.count("\n") == 1


def test_train_py_names_a_damaged_config_and_writes_nothing(tmp_path):
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_bytes(b"model:\n  emb_dim: \xff\xfe\n")
    result = run_script("train.py", "--config-dir", str(tmp_path / "conf"), "+experiment=mine",
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: config {tmp_path / 'conf' / 'experiment' / 'mine.yaml'} cannot be read "
                                    "(UnicodeDecodeError")
    assert not (tmp_path / "run").exists()
