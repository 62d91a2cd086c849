"""DDP through Lightning on CPU (gloo): one run directory, rank-zero output, and the single-process result."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlit.data.shard_sampler import BatchShardSampler, PaddedWindows
from gptlit.weights.io import read_checkpoint, read_weights

from ..conftest import ROOT

# End-to-end runs of minutes: the whole suite (make test, CI) runs them, make test-quick leaves them out.
pytestmark = pytest.mark.slow

STEPS = 6
EVAL_EVERY = 3


def run_train(workdir: Path, verdict: Path, *overrides: str, returncode: int = 0) -> tuple[Path, str]:
    """Run train.py in ``workdir`` with the Verdict, no dropout and no shuffling; returns its run dir and output."""
    workdir.mkdir(parents=True)
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "model=tiny",
        "model.drop_rate=0",
        f"data.path={verdict}",
        "data.context_length=32",
        "data.shuffle=false",
        "optimizer.lr=0.004",
        "trainer.accelerator=cpu",
        f"trainer.max_steps={STEPS}",
        f"trainer.val_check_interval={EVAL_EVERY}",
        "logger=csv",
        "callbacks.sample_text=null",
        # Microseconds in the name: a child process that composed its own run directory would get another.
        "hydra.run.dir=outputs/${now:%H-%M-%S-%f}",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == returncode, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dirs = list((workdir / "outputs").iterdir())
    assert len(run_dirs) == 1, run_dirs
    return run_dirs[0], proc.stdout + proc.stderr


def eval_losses(run_dir: Path) -> torch.Tensor:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["val/loss"]]
    return torch.tensor([[float(r["step"]), float(r["train/loss"]), float(r["val/loss"])] for r in rows])


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize(
    ("n", "batch_size", "world", "drop_last", "shuffle"),
    [(15, 2, 2, False, False), (15, 4, 3, False, True), (16, 2, 2, True, True), (15, 2, 2, True, False),
     (9, 2, 4, False, True)],
)
def test_batch_shard_sampler_deals_each_single_process_batch_to_one_rank(n, batch_size, world, drop_last, shuffle):
    dataset = range(n)
    shards = []
    for rank in range(world):
        sampler = BatchShardSampler(dataset, batch_size, world, rank, shuffle=shuffle, seed=7, drop_last=drop_last)
        sampler.set_epoch(3)
        indices = list(sampler)
        assert len(indices) == len(sampler)
        shards.append([indices[i : i + batch_size] for i in range(0, len(indices), batch_size)])
    # Every rank runs as many batches (under FSDP each forward takes all ranks); the short ones end with whole
    # batches of the filler index, which PaddedWindows maps to a window with nothing to score.
    assert len({len(shard) for shard in shards}) == 1
    fillers = [[batch for batch in shard if batch == [n] * batch_size] for shard in shards]
    assert sum(map(len, fillers)) == -len(single_process_batches(n, batch_size, drop_last)) % world
    shards = [[batch for batch in shard if n not in batch] for shard in shards]
    # Interleaving the ranks' batches round-robin gives back the single process's batches, in order.
    merged = [shards[k % world][k // world] for k in range(sum(map(len, shards)))]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(7 + 3)).tolist() if shuffle else list(range(n))
    assert merged == [[order[i] for i in batch] for batch in single_process_batches(n, batch_size, drop_last)]


def single_process_batches(n: int, batch_size: int, drop_last: bool) -> list[list[int]]:
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return batches[:-1] if drop_last and len(batches[-1]) < batch_size else batches


def test_a_filler_window_keeps_the_input_and_scores_nothing():
    windows = [(torch.tensor([1, 2]), torch.tensor([2, 3])), (torch.tensor([3, 4]), torch.tensor([4, 5]))]
    padded = PaddedWindows(windows)
    assert len(padded) == 2 and padded[1] == windows[1]
    inputs, targets = padded[2]
    assert inputs.tolist() == [1, 2] and targets.tolist() == [-100, -100]
    # cross_entropy's default ignore_index: such a target is not scored.
    logits = torch.randn(2, 5)
    assert torch.isnan(torch.nn.functional.cross_entropy(logits, targets))


def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(tmp_path, verdict_path):
    # Two ranks x 2 windows against one process x 4 windows: Lightning's sampler gives rank r the windows
    # r, r+2, ..., so both see windows 0-3 in step 1, 4-7 in step 2 and so on. Evaluation reads 2 batches
    # per rank (4 batches of 2 in all, dealt by BatchShardSampler) against 2 batches of 4: the same 8 windows.
    ddp_dir, ddp_out = run_train(
        tmp_path / "ddp", verdict_path, "trainer=ddp", "trainer.devices=2", "data.batch_size=2",
        "trainer.limit_val_batches=2",
    )
    one_dir, _ = run_train(tmp_path / "one", verdict_path, "data.batch_size=4", "trainer.limit_val_batches=2")
    # The control: the same evaluation windows, but half the global batch in training.
    half_dir, _ = run_train(tmp_path / "half", verdict_path, "data.batch_size=2", "trainer.limit_val_batches=4")

    # One run directory (checked in run_train) holding one set of outputs, written by rank zero alone.
    assert sorted(p.name for p in (ddp_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (ddp_dir / ".hydra" / "config.yaml").is_file()
    assert (ddp_dir / "loss-plot.png").is_file()
    for step in range(EVAL_EVERY, STEPS + 1, EVAL_EVERY):
        assert ddp_out.count(f"(Step {step:06d}): Train loss") == 1, ddp_out[-3000:]

    ddp, one, half = eval_losses(ddp_dir), eval_losses(one_dir), eval_losses(half_dir)
    assert ddp[:, 0].tolist() == one[:, 0].tolist() == [EVAL_EVERY, STEPS]  # logged at the printed step
    # float32 losses near 11 are spaced 1e-6 apart; the gradient all-reduce adds the two halves of the batch
    # in another order than one process's matmul does, a few ulps per element, which AdamW's normalised steps
    # carry but do not grow in 6 steps (measured: 1e-6 in the loss, 2e-5 in any weight). The tolerances sit 100x
    # above that and 50-100x below what half the global batch does to the same run.
    assert torch.allclose(ddp, one, rtol=0, atol=1e-4), (ddp, one)
    assert (half - one).abs().max() > 1e-2
    ddp_weights, one_weights = final_weights(ddp_dir), final_weights(one_dir)
    assert max_weight_diff(ddp_weights, one_weights) < 1e-3
    assert max_weight_diff(final_weights(half_dir), one_weights) > 1e-2


@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_epoch_end_sampling_export_and_a_skipped_step_take_every_rank_along(tmp_path, verdict_path, trainer):
    # Under FSDP a block's forward and the full state dict's gather take every rank: a sample or an export run on
    # rank zero alone would leave rank one waiting. Rank one's loss at step 2 is NaN: with module.on_nonfinite=skip
    # both ranks must skip that update, or the gradient all-reduce (reduce-scatter under FSDP) pairs a rank that
    # skipped backward with one that did not.
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, str(ROOT / "train.py"), "model=tiny", f"data.path={verdict_path}", "data.context_length=32",
        f"trainer={trainer}", "trainer.devices=2", "trainer.accelerator=cpu",
        "trainer.max_steps=6", "+trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
        "trainer.val_check_interval=3", "module.on_nonfinite=skip", "sample.max_new_tokens=5",
        "+callbacks.nan._target_=tests.training_parts.NonFiniteLoss", "+callbacks.nan.rank=1",
        "+callbacks.nan.step=2", "+callbacks.record._target_=tests.training_parts.RecordWeights",
        "+callbacks.record.dirpath=${run_dir}", "callbacks.loss_plot=null", "logger=csv", f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]

    lines = out.replace("\r", "\n").splitlines()
    assert sum(line.startswith("Every effort moves you") for line in lines) == 2  # one per epoch, rank zero's
    skipped = [line for line in lines if "batch skipped" in line]
    assert skipped == ["warning: training loss of another process is not finite at step 2 (epoch 1, batch 2); "
                       "batch skipped"]
    ranks = [json.loads((run_dir / f"weights-rank{r}.json").read_text()) for r in (0, 1)]
    if trainer == "ddp":
        assert ranks[0] == ranks[1]  # the replicas stayed equal
    for weights in ranks:  # each rank's replica or shard
        assert weights["2"] == weights["1"] and weights["3"] != weights["2"]  # step 2 left the weights alone

    final = {k.removeprefix("model."): v for k, v in final_weights(run_dir).items()}
    for name in ("model.safetensors", "model.pth"):
        exported = read_weights(run_dir / name).state
        assert all(torch.equal(exported[k], final[k]) for k in final), name


def test_ddp_run_resumed_mid_epoch_continues_in_the_same_data_order(tmp_path, verdict_path):
    # Shuffled windows, cut at step 5 of a 36-step epoch: the resumed ranks must take up their shares of the same
    # epoch's order at batch 6, not start the epoch over, and the next epoch must draw the order it would have.
    # With dropout, each rank draws its own masks, and the resume restores each rank's generators.
    ddp = ("trainer=ddp", "trainer.devices=2", "data.shuffle=true", "model.drop_rate=0.1")
    whole, _ = run_train(tmp_path / "whole", verdict_path, *ddp, "trainer.max_steps=40")
    probe = ("+callbacks.rng_probe._target_=tests.training_parts.RngStateProbe",
             f"+callbacks.rng_probe.dirpath={tmp_path / 'rng'}")
    cut, _ = run_train(tmp_path / "cut", verdict_path, *ddp, "trainer.max_steps=5", *probe)
    ranks = [json.loads((tmp_path / "rng" / f"rng-rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == 5 and not set(ranks[0]) & set(ranks[1])  # never the same generator state
    state = read_checkpoint(cut / "checkpoints" / "last.ckpt")["TextDataModule"]
    assert state == {"train_order_epoch": 0, "train_samples_done_per_rank": 10, "world_size": 2}  # 5 batches of 2
    resumed, _ = run_train(tmp_path / "resumed", verdict_path, *ddp, "trainer.max_steps=40",
                           f"ckpt_path={cut / 'checkpoints' / 'last.ckpt'}")
    assert max_weight_diff(final_weights(resumed), final_weights(whole)) == 0.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_one_machine_match_two_devices_and_tokenize_once(tmp_path, verdict_path):
    # Two processes started as Lightning's nodes are started (MASTER_ADDR, MASTER_PORT, NODE_RANK; neither has a
    # LOCAL_RANK), into one run directory: the corpus is tokenized once, by global rank 0 (before, both nodes'
    # first processes did), and the run trains what two devices of one node train.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "verdict.txt").write_text(verdict_path.read_text(encoding="utf-8"), encoding="utf-8")
    common = ("data=textfiles", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
              "data.tokenize_workers=1", "data.shuffle=true", "model.drop_rate=0.1", "trainer=ddp")
    devices, _ = run_train(tmp_path / "devices", verdict_path, *common, "trainer.devices=2")
    assert len(list((tmp_path / "cache").iterdir())) == 1

    import shutil

    shutil.rmtree(tmp_path / "cache")
    run_dir = tmp_path / "nodes"
    port = str(free_port())
    cmd = [sys.executable, str(ROOT / "train.py"), "model=tiny", "data.context_length=32", "optimizer.lr=0.004",
           "trainer.accelerator=cpu", f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={EVAL_EVERY}",
           "logger=csv", "callbacks.sample_text=null", *common, "trainer.devices=1", "trainer.num_nodes=2",
           f"hydra.run.dir={run_dir}"]
    nodes = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                                   "NODE_RANK": str(rank)})
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert sum(out.count("tokenizing") > 0 for out in outputs) == 1  # one process tokenized the corpus
    # Equal up to the order of float sums: one process per node computes with both cores, where two processes of
    # one node (Lightning divides the cores among them) compute with one each.
    assert max_weight_diff(final_weights(run_dir), final_weights(devices)) < 1e-5
    torch.testing.assert_close(eval_losses(run_dir), eval_losses(devices), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("trainer", "signum"), [("ddp", "SIGTERM"), ("ddp", "SIGINT"), ("fsdp", "SIGTERM")])
def test_a_signal_to_one_rank_stops_every_rank_at_one_step_with_one_checkpoint_that_resumes(
        tmp_path, verdict_path, trainer, signum):
    # The signal reaches rank 1 only (a user's kill; a cluster signals all): both ranks stop after the same
    # optimizer step, rank 0 writes last.ckpt and the resume command, and the resumed run ends where the
    # uninterrupted one does, bit for bit (dropout on, shuffled, each rank its own random states).
    ddp = (f"trainer={trainer}", "trainer.devices=2", "data.shuffle=true", "model.drop_rate=0.1", "trainer.max_steps=12")
    whole, _ = run_train(tmp_path / "whole", verdict_path, *ddp)
    cut, out = run_train(tmp_path / "cut", verdict_path, *ddp, "+callbacks.signal._target_=tests.training_parts.SignalAtStep",
                         "+callbacks.signal.step=4", "+callbacks.signal.rank=1", f"+callbacks.signal.signum={signum}",
                         returncode=128 + getattr(signal, signum))
    assert out.count(f"{signum} received: stopping after this step") == 1
    match = re.search(r"Interrupted at step (\d+); checkpoint written to (\S+)\. Resume with:\n  (.+)", out)
    assert match and out.count("Interrupted at step") == 1, out[-3000:]
    assert int(match.group(1)) in (4, 5) and Path(match.group(2)) == cut / "checkpoints" / "last.ckpt"
    assert read_checkpoint(Path(match.group(2)))["global_step"] == int(match.group(1))
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), *shlex.split(match.group(3))[2:]], cwd=tmp_path / "cut",
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert max_weight_diff(final_weights(cut), final_weights(whole)) == 0.0
