"""The planner's predictions against what a real model and a real run do."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from gptlit.core.families import build_model, model_config
from gptlit.core.llama import LlamaConfig
from gptlit.core.model import GPTConfig
from gptlit.files import human_bytes
from gptlit.planning.flops import training_flops_per_token
from gptlit.planning.plan import (
    FP32_BYTES,
    activation_bytes_per_token,
    batches_per_evaluation,
    evaluation_count,
    fewest_shards,
    largest_micro_batch,
    parameter_count,
    parameter_shapes,
    RunShape,
    describe,
    plan_memory,
    plan_run,
    sharded_elements,
    steps_for,
)
from gptlit.planning import plan as plan_module
from gptlit.core.recompute import recompute_in_backward

from ..conftest import ROOT, TINY_CFG, find_verdict


def saved_activation_bytes(cfg, batch: int, checkpointing: bool = False) -> int:
    """Bytes autograd keeps for the backward pass of one training forward and loss, parameters left out;
    ``checkpointing``: with trainer=fsdp's blocks, which keep their input and recompute the rest."""
    model = build_model(cfg).train()
    if checkpointing:
        for block in model.trf_blocks:
            recompute_in_backward(block)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()  # views of one storage count once
        return t

    x = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        F.cross_entropy(model(x).flatten(0, 1), x.flatten())
    return sum(storages.values())


@pytest.mark.parametrize(
    "changes",
    [
        {},  # dropout on: SDPA falls back to the math path on a CPU
        {"drop_rate": 0.0},  # SDPA's fused CPU kernel
        {"kernels": "book"},
        {"n_heads": 8, "context_length": 64},
        {"emb_dim": 96, "n_layers": 3, "qkv_bias": True},
    ],
)
def test_activation_formula_matches_what_autograd_saves(changes):
    cfg = GPTConfig(**{"vocab_size": 1000, "context_length": 32, "emb_dim": 64, "n_heads": 4, "n_layers": 2, **changes})
    batch = 3
    predicted = activation_bytes_per_token(cfg, "cpu") * batch * cfg.context_length
    # The formula adds the backward pass's peak (the logits' gradient and log-softmax) to what is saved.
    saved = predicted - 2 * cfg.vocab_size * FP32_BYTES * batch * cfg.context_length
    assert saved == pytest.approx(saved_activation_bytes(cfg, batch), rel=0.05)


LLAMA = {"family": "llama3", "vocab_size": 1000, "context_length": 32, "emb_dim": 64, "n_heads": 4, "n_kv_groups": 2,
         "n_layers": 2, "hidden_dim": 96}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"hidden_dim": 160, "n_layers": 3},
        {"n_kv_groups": 4},
        {"n_heads": 8, "context_length": 64},
        {"family": "qwen3", "qk_norm": True, "head_dim": 32},
        {"family": "qwen3", "qk_norm": True, "n_kv_groups": 1, "emb_dim": 128},
        {"drop_rate": 0.1},  # dropout: SDPA falls back to the explicit softmax on a CPU; the formula estimates it
        {"drop_rate": 0.1, "n_heads": 8, "family": "qwen3", "qk_norm": True},
    ],
)
def test_llama_activation_formula_matches_what_autograd_saves(changes):
    cfg = LlamaConfig(**{**LLAMA, **changes})
    batch = 3
    predicted = activation_bytes_per_token(cfg, "cpu") * batch * cfg.context_length
    saved = predicted - 2 * cfg.vocab_size * FP32_BYTES * batch * cfg.context_length
    # Logits dominate tiny models, so the blocks' share is checked on its own too: the difference of two depths.
    deeper = LlamaConfig(**{**LLAMA, **changes, "n_layers": cfg.n_layers + 1})
    block_predicted = (activation_bytes_per_token(deeper, "cpu") - activation_bytes_per_token(cfg, "cpu")) * batch * cfg.context_length
    block_saved = saved_activation_bytes(deeper, batch) - saved_activation_bytes(cfg, batch)
    tolerance = 0.08 if cfg.drop_rate else 0.01
    assert saved == pytest.approx(saved_activation_bytes(cfg, batch), rel=0.05)
    assert block_predicted == pytest.approx(block_saved, rel=tolerance)


@pytest.mark.parametrize("cfg", [GPTConfig(emb_dim=64, n_heads=4, n_layers=3, context_length=48),
                                 GPTConfig(qkv_bias=True, emb_dim=32, n_heads=2, n_layers=1),
                                 LlamaConfig(**LLAMA), LlamaConfig(**{**LLAMA, "tie_embeddings": False}),
                                 LlamaConfig(**{**LLAMA, "family": "qwen3", "qk_norm": True, "head_dim": 32})],
                         ids=["gpt2", "gpt2-bias", "llama3", "llama3-untied", "qwen3"])
def test_parameter_count_is_the_models(cfg):
    assert parameter_count(cfg) == sum(p.numel() for p in build_model(cfg).parameters())


def test_memory_split_of_gpt2_124m():
    # 162,419,712 parameters at context 256 (the book's 163,009,536 is at context 1024: 768 x 768 fewer here).
    mem = plan_memory(GPTConfig(context_length=256), micro_batch=2, seq_len=256, device_type="cpu")
    assert mem.weights == mem.gradients == 162_419_712 * 4 and mem.optimizer == 162_419_712 * 8
    assert mem.baseline == 0 and mem.peak == mem.weights + mem.gradients + mem.optimizer + mem.activations


MODELS = [GPTConfig(vocab_size=1001, emb_dim=64, n_heads=4, n_layers=3, context_length=48),
          GPTConfig(qkv_bias=True, emb_dim=32, n_heads=2, n_layers=1),
          LlamaConfig(**LLAMA), LlamaConfig(**{**LLAMA, "tie_embeddings": False}),
          LlamaConfig(**{**LLAMA, "family": "qwen3", "qk_norm": True, "head_dim": 32})]
MODEL_IDS = ["gpt2", "gpt2-bias", "llama3", "llama3-untied", "qwen3"]


@pytest.mark.parametrize("cfg", MODELS, ids=MODEL_IDS)
def test_parameter_shapes_are_the_models(cfg):
    block, root = parameter_shapes(cfg)
    model = build_model(cfg)
    shapes = sorted((p.shape[0], p[0].numel()) for p in model.parameters())
    assert shapes == sorted(block * cfg.n_layers + root)
    assert sorted((p.shape[0], p[0].numel()) for p in model.trf_blocks[0].parameters()) == sorted(block)


def test_sharded_memory_of_a_small_gpt2_by_hand():
    cfg = MODELS[0]  # vocab 1001, emb_dim 64, 3 layers, context 48, no qkv bias
    # A block: four 64 x 64 attention matrices and the output's bias (16,448), the feed-forward's 256 x 64 and
    # 64 x 256 with their biases (33,088), two LayerNorms' scales and shifts (256): 49,792, every row count a
    # multiple of 8. The rest: token embedding and head 1001 x 64 each, positions 48 x 64, the final norm's 128.
    assert parameter_count(cfg) == 3 * 49_792 + 2 * 1001 * 64 + 48 * 64 + 128 == 280_704
    # Two ways: half of each block; 501 of the embedding's and head's 1001 rows (rank one gets 500), 24 of 48
    # positions, 32 of each norm vector's 64.
    two = plan_memory(cfg, micro_batch=2, seq_len=48, device_type="cpu", shards=2)
    held = 3 * 24_896 + 2 * 501 * 64 + 24 * 64 + 2 * 32
    assert held == 140_416 == 280_704 / 2 + 64  # half a row of each 1001-row matrix is padding
    assert (two.weights, two.gradients, two.optimizer) == (held * 4, held * 4, held * 8)
    # Gathered: the whole rest (131,328) and two whole blocks, FSDP2 prefetching the next while one runs.
    assert two.gathered == (131_328 + 2 * 49_792) * 4 == 923_648
    # Eight ways: 126 of 1001 rows (rank seven gets 119), 6 of 48, 8 of 64.
    eight = plan_memory(cfg, micro_batch=2, seq_len=48, device_type="cpu", shards=8)
    held = 3 * 6_224 + 2 * 126 * 64 + 6 * 64 + 2 * 8
    assert held == 35_200 and (eight.weights, eight.gradients, eight.optimizer) == (140_800, 140_800, 281_600)
    assert eight.gathered == two.gathered and eight.activations == two.activations
    assert eight.peak == 140_800 * 2 + 281_600 + 923_648 + eight.activations
    # Sharding leaves the activations alone; checkpointing keeps each block's input (64 floats a token) and one
    # block's own (16 x 64 without dropout: drop_rate 0.1 on a CPU adds the explicit softmax's 2.25 x 4 heads x 48
    # and the masks' 0.75 x 64), besides the logits and the rest (1001 + 3 x 64) and the backward's 2 x 1001.
    block = 16 * 64 + 0.75 * 64 + 2.25 * 4 * 48
    checkpointed = plan_memory(cfg, micro_batch=2, seq_len=48, device_type="cpu", shards=8, checkpointing=True)
    assert checkpointed.activations == 4 * (3 * 64 + block + 1001 + 3 * 64 + 2 * 1001) * 2 * 48 == 1_878_144
    assert two.activations == 4 * (3 * block + 1001 + 3 * 64 + 2 * 1001) * 2 * 48
    # One device sharded nothing: the unsharded plan, with nothing gathered.
    assert plan_memory(cfg, 2, 48, "cpu", shards=1) == plan_memory(cfg, 2, 48, "cpu")


@pytest.mark.parametrize("shards", [2, 3, 8])
@pytest.mark.parametrize("cfg", MODELS, ids=MODEL_IDS)
def test_a_ranks_planned_weights_are_fsdp2s_padded_shard(cfg, shards):
    # FSDP2 (fully_shard) shards every parameter along dim 0 as torch.chunk does, chunks of ceil(rows / shards)
    # rows, and keeps each rank's shard in storage padded to the first chunk: per rank, the sum over the
    # parameters of ceil(rows / shards) x the elements of a row. A real shard is checked against the planner in
    # test_fully_shard_holds_the_planned_shard_on_every_rank below.
    reference = sum(-(-p.shape[0] // shards) * p[0].numel() for p in build_model(cfg).parameters())
    memory = plan_memory(cfg, micro_batch=1, seq_len=cfg.context_length, device_type="cpu", shards=shards)
    assert memory.weights == memory.gradients == reference * FP32_BYTES
    assert memory.optimizer == reference * 8
    block, root = parameter_shapes(cfg)
    assert memory.gathered == (sharded_elements(root, 1) + min(2, cfg.n_layers) * sharded_elements(block, 1)) * 4


FULLY_SHARD = """
import json, sys
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.testing._internal.distributed.fake_pg import FakeStore
from gptlit.core.families import build_model, model_config

held = {}
for name, cfg in json.loads(sys.argv[1]).items():
    for shards in (2, 8):
        for rank in range(shards):
            dist.init_process_group("fake", rank=rank, world_size=shards, store=FakeStore())
            with torch.device("meta"):
                model = build_model(model_config(cfg))
            mesh = init_device_mesh("cpu", (shards,))
            for block in model.trf_blocks:  # as gptlit.training.fsdp shards it
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            model.to_empty(device="cpu")
            held[f"{name} {shards} {rank}"] = sum(p.to_local().numel() for p in model.parameters())
            dist.destroy_process_group()
print(json.dumps(held))
"""


def test_fully_shard_holds_the_planned_shard_on_every_rank():
    # torch's own fully_shard, each rank in turn in one process: torch's fake process group takes the place of
    # the others (its collectives do nothing; the shard is what a real run's rank holds). Rank zero's shard is
    # the largest, and the planner's; the others' add up to the whole.
    configs = {"gpt2": {**vars(MODELS[0])}, "llama3": LLAMA,
               "qwen3": {**LLAMA, "family": "qwen3", "qk_norm": True, "head_dim": 32, "tie_embeddings": False}}
    out = subprocess.run([sys.executable, "-c", FULLY_SHARD, json.dumps(configs)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    held = json.loads(out.stdout)
    for name, cfg in configs.items():
        cfg = build_model(model_config(cfg)).cfg
        for shards in (2, 8):
            ranks = [held[f"{name} {shards} {rank}"] for rank in range(shards)]
            planned = plan_memory(cfg, 1, cfg.context_length, "cpu", shards=shards).weights // FP32_BYTES
            assert ranks[0] == max(ranks) == planned, (name, shards, ranks)
            assert sum(ranks) == parameter_count(cfg)


@pytest.mark.parametrize("cfg", [GPTConfig(vocab_size=1000, context_length=32, emb_dim=64, n_heads=4, n_layers=2),
                                 GPTConfig(vocab_size=1000, context_length=32, emb_dim=64, n_heads=4, n_layers=2,
                                           drop_rate=0.0),
                                 LlamaConfig(**LLAMA)], ids=["gpt2", "gpt2-no-dropout", "llama3"])
def test_checkpointed_activation_formula_matches_what_autograd_saves(cfg):
    # What the forward pass keeps with trainer=fsdp's recomputed blocks: each block's input and the rest, which
    # the planner adds one block's full activations (its recompute) and the backward's peak to.
    batch, tokens = 3, 3 * cfg.context_length
    deeper = replace(cfg, n_layers=cfg.n_layers + 1)
    per_block = (saved_activation_bytes(deeper, batch, checkpointing=True)
                 - saved_activation_bytes(cfg, batch, checkpointing=True))
    assert per_block == cfg.emb_dim * FP32_BYTES * tokens
    one_block = (activation_bytes_per_token(deeper, "cpu") - activation_bytes_per_token(cfg, "cpu")) * tokens
    predicted = activation_bytes_per_token(cfg, "cpu", checkpointing=True) * tokens
    kept = predicted - one_block - 2 * cfg.vocab_size * FP32_BYTES * tokens
    assert kept == pytest.approx(saved_activation_bytes(cfg, batch, checkpointing=True), rel=0.05)


def test_fewest_shards_is_the_first_that_fits():
    cfg = GPTConfig(context_length=1024, emb_dim=1600, n_heads=25, n_layers=48)  # GPT-2 1558M
    capacity = 16 * 10**9
    shards = fewest_shards(cfg, 2, 1024, "cuda", capacity)
    fits = [plan_memory(cfg, 2, 1024, "cuda", shards=n, checkpointing=True).peak <= capacity
            for n in (shards - 1, shards)]
    assert shards > 2 and fits == [False, True]
    # Activations alone beyond the device: no number of ranks helps.
    assert fewest_shards(cfg, 64, 1024, "cuda", capacity) is None
    largest = largest_micro_batch(cfg, 1024, "cuda", capacity, shards=shards, checkpointing=True)
    assert plan_memory(cfg, largest, 1024, "cuda", shards=shards, checkpointing=True).peak <= 0.9 * capacity
    assert plan_memory(cfg, largest + 1, 1024, "cuda", shards=shards, checkpointing=True).peak > 0.9 * capacity


def test_whole_run_ends_at_the_first_limit():
    assert steps_for(-1, 10, 9, None, 512) == (90, "10 epochs")
    assert steps_for(20, 10, 9, None, 512) == (20, "trainer.max_steps=20")
    assert steps_for(-1, 10, 9, 5120, 512) == (10, "a budget of 5,120 tokens")
    assert steps_for(-1, None, None, None, 512) == (None, "no limit set")


def test_evaluations_follow_the_interval_or_the_books_schedule():
    # The default run: 90 steps, evaluated after steps 5, 10, ..., 90 (18 lines); the book's run after steps
    # 1, 6, ..., 86 (18 lines too); a fractional interval counts epochs, which the plan leaves out.
    assert evaluation_count(90, 5) == 18 and evaluation_count(90, 5, eval_freq=5) == 18
    assert evaluation_count(91, 5, eval_freq=5) == 19 and evaluation_count(90, 0.5) is None
    assert evaluation_count(None, 5) is None
    # limit_val_batches: a count, capped by the split's batches, or a fraction of them.
    assert batches_per_evaluation(5, 9) == 5 and batches_per_evaluation(5, 1) == 1
    assert batches_per_evaluation(0.5, 9) == 5 and batches_per_evaluation(1.0, 9) == 9


def test_largest_micro_batch_is_the_last_that_fits():
    cfg = GPTConfig(context_length=1024)
    capacity = 80 * 10**9
    best = largest_micro_batch(cfg, 1024, "cuda", capacity)
    assert best > 0
    assert plan_memory(cfg, best, 1024, "cuda").peak <= 0.9 * capacity < plan_memory(cfg, best + 1, 1024, "cuda").peak


TINY_RUN = ["model=tiny", "data.context_length=32", f"data.path={find_verdict()}", "trainer.max_steps=6",
            "trainer.precision=32-true"]


def peak_rss_of_train(tmp_path) -> int:
    """Peak resident bytes of a real `python train.py` run, read by the process itself as it exits."""
    code = (
        "import atexit, resource, runpy, sys\n"
        "atexit.register(lambda: print(f'PEAK {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}', file=sys.stderr))\n"
        f"sys.argv = ['train.py', *{TINY_RUN!r}, 'hydra.run.dir={tmp_path}']\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return int(re.search(r"PEAK (\d+)", run.stderr).group(1))


def test_plan_predicts_the_peak_memory_of_a_real_tiny_run(tmp_path):
    out = subprocess.run([sys.executable, "plan.py", *TINY_RUN], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    value, unit = re.search(r"peak\s+([\d.]+) (MB|GB)\s+predicted", out.stdout).groups()
    predicted = float(value) * (1e6 if unit == "MB" else 1e9)
    assert "3,242,752 parameters" in out.stdout and "whole run    6 steps" in out.stdout
    assert predicted == pytest.approx(peak_rss_of_train(tmp_path), rel=0.15)


def test_plan_refuses_a_bad_override_in_one_line():
    out = subprocess.run([sys.executable, "plan.py", "model=tiny", "data.batch_sise=3"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: ") and "batch_sise" in out.stderr


def test_help_lists_settings_and_examples_and_promises_no_speed():
    out = subprocess.run([sys.executable, "plan.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    assert "== Settings" in out.stdout and "== Examples ==" in out.stdout and "python plan.py model=gpt1558m" in out.stdout
    assert "Takes seconds" not in out.stdout and "tokenized once" in out.stdout


def test_plan_says_when_the_run_does_not_fit(monkeypatch):
    # gpt1558m's 31 GB on a 23 GB machine was printed as if it would run.
    monkeypatch.setattr(plan_module, "available_memory", lambda device: 10**6)
    shape = RunShape(config=GPTConfig(**TINY_CFG), micro_batch=2, devices=1, accumulation=1,
                     device=torch.device("cpu"), precision="32-true", autocast_dtype=None,
                     optimizer_factory=lambda model: torch.optim.AdamW(model.parameters()), steps=3, steps_per_epoch=3,
                     budget="max_steps", baseline=0)
    text = describe(plan_run(shape))
    assert "DOES NOT FIT: cpu has 1.00 MB free; lower data.batch_size" in text
    monkeypatch.setattr(plan_module, "available_memory", lambda device: 10**12)
    assert re.search(r"\n  fits +1\.00 TB  free on cpu now\n", describe(plan_run(shape)))


def test_plan_py_under_fsdp_prints_one_ranks_share(tmp_path):
    out = subprocess.run([sys.executable, "plan.py", *TINY_RUN, "trainer=fsdp", "trainer.accelerator=cpu",
                          "trainer.devices=2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    cfg = GPTConfig(**{**TINY_CFG, "context_length": 32})
    memory = plan_memory(cfg, 2, 32, "cpu", shards=2, checkpointing=True)
    assert "memory       per device, 32-true, sharded 2 ways (trainer=fsdp):\n" in out.stdout
    assert f"  weights         {memory.weights / 1e6:.2f} MB\n" in out.stdout
    assert re.search(r"\n  gathered +13\.0 MB  \(the full weights of two blocks and of the embeddings and head",
                     out.stdout)
    assert "(one micro-batch of 2; the blocks recomputed in the backward pass)" in out.stdout
    # Two CPU processes share this machine's memory.
    assert "predicted for the 2 processes on this machine, which share its memory" in out.stdout
    # Muon's whole matrices cannot be sharded: refused as training would refuse it, in one line.
    out = subprocess.run([sys.executable, "plan.py", *TINY_RUN, "trainer=fsdp", "trainer.accelerator=cpu",
                          "trainer.devices=2", "optimizer=muon"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and out.stdout == "" and "optimizer=muon orthogonalizes whole matrices" in out.stderr


def planned(monkeypatch, available: int, **shape) -> str:
    """describe() of MODELS[0]'s run on a CPU with ``available`` bytes free, the probe's timings stubbed."""
    monkeypatch.setattr(plan_module, "available_memory", lambda device: available)
    monkeypatch.setattr(plan_module, "time_steps", lambda run, cfg, steps=3: 0.1)
    monkeypatch.setattr(plan_module, "step_peak_flops", lambda *args: 1e9)
    run = RunShape(config=MODELS[0], micro_batch=2, devices=shape.get("shards", 1), accumulation=1,
                   device=torch.device("cpu"), precision="32-true", autocast_dtype=None,
                   optimizer_factory=lambda model: torch.optim.AdamW(model.parameters()), steps=3,
                   steps_per_epoch=3, budget="max_steps", baseline=0, **shape)
    return plan_run(run)


def test_advice_when_the_run_does_not_fit_follows_what_fills_the_memory(monkeypatch):
    cfg = MODELS[0]
    states = parameter_count(cfg) * 16  # 4.49 MB; the activations of 2 x 48 tokens take 2 MB more
    # Without sharding, a model whose weights, gradients and AdamW state alone exceed the device: trainer=fsdp,
    # across machines on a CPU (its processes share one machine's memory), with the fewest that fit.
    plan = planned(monkeypatch, 4 * 10**6)
    needed = fewest_shards(cfg, 2, 48, "cpu", 4 * 10**6)
    assert 2 < needed <= 8
    assert (f"DOES NOT FIT: cpu has 4.00 MB free; the weights, gradients and AdamW state alone take "
            f"{human_bytes(states)}: shard them with trainer=fsdp across {needed} machines "
            f"(trainer.num_nodes={needed}, trainer.devices=1: a machine's processes share its memory), or choose a "
            "smaller model=") in describe(plan)
    # On GPUs, devices.
    assert f"across {needed} devices (trainer.devices x trainer.num_nodes)" in describe(replace(plan, device="cuda:0"))
    # When the activations are what overflows, a smaller micro-batch first; no more devices under DDP.
    text = describe(planned(monkeypatch, 5 * 10**6))
    assert "DOES NOT FIT: cpu has 5.00 MB free; lower data.batch_size" in text and "more devices" not in text
    assert "or choose a smaller model=, or shard the model with trainer=fsdp across" in text
    # Sharded already: more ranks.
    plan = planned(monkeypatch, 3 * 10**6, shards=2, checkpointing=True)
    needed = fewest_shards(cfg, 2, 48, "cpu", 3 * 10**6)
    text = describe(replace(plan, device="cuda:0"))
    assert (f"DOES NOT FIT: cuda:0 has 3.00 MB free; shard across {needed} devices (trainer.devices x "
            "trainer.num_nodes), or lower data.batch_size") in text
    # Activations alone beyond the device: no number of ranks helps.
    text = describe(planned(monkeypatch, 10**6, shards=2, checkpointing=True))
    assert "DOES NOT FIT: cpu has 1.00 MB free; lower data.batch_size" in text and "shard across" not in text


def test_a_cpus_processes_are_planned_in_its_memory_together(monkeypatch):
    # Two ranks on one CPU machine: each its own shard, process and activations, all in the one machine's memory.
    plan = planned(monkeypatch, 10**9, shards=2, checkpointing=True, local_processes=2)
    assert plan.needed == 2 * plan.memory.peak
    text = describe(plan)
    machine = human_bytes(2 * plan.memory.peak)
    assert f"  machine      {machine:>10}  predicted for the 2 processes on this machine" in text
    assert describe(planned(monkeypatch, 2 * plan.memory.peak - 1, shards=2, checkpointing=True,
                            local_processes=2)).count("DOES NOT FIT") == 1


@pytest.mark.slow
def test_a_real_fsdp_run_holds_the_planned_shard(tmp_path, verdict_path):
    # train.py model=tiny trainer=fsdp on two CPU processes: the elements of the weights each rank holds once
    # training starts (tests/training_parts.py's ModelBuildProbe) against the planner's per-device weights.
    from ..training.test_distributed import run_train

    probe = ("+callbacks.build._target_=tests.training_parts.ModelBuildProbe", f"+callbacks.build.dirpath={tmp_path}")
    run_train(tmp_path / "fsdp", verdict_path, "trainer=fsdp", "trainer.devices=2", "trainer.max_steps=1",
              "trainer.val_check_interval=1", *probe)
    held = [json.loads((tmp_path / f"build-rank{rank}.json").read_text())["held"] for rank in (0, 1)]
    cfg = GPTConfig(**{**TINY_CFG, "context_length": 32, "n_heads": 2})  # conf/model/tiny.yaml, run_train's context
    planned = plan_memory(cfg, 1, 32, "cpu", shards=2).weights // FP32_BYTES
    # Rank zero holds 25,129 of the embedding's and head's 50,257 rows, rank one 25,128.
    assert held == [planned, parameter_count(cfg) - planned]


def test_a_block_costs_at_least_its_matmuls_when_the_machines_load_swallows_it(monkeypatch):
    # On a shared 2-core machine one block once timed slower than two: a block cost 0.0 ms, the plan of gpt1558m
    # counted 48 blocks' FLOPs in the rest's 7.3 s and printed MFU 10.25.
    cfg = GPTConfig(**TINY_CFG)
    rate = 1e9
    block_seconds = (training_flops_per_token(replace(cfg, n_layers=2))
                     - training_flops_per_token(replace(cfg, n_layers=1))) * 2 * cfg.context_length / rate
    monkeypatch.setattr(plan_module, "available_memory", lambda device: 10**6)  # the model does not fit: blocks
    monkeypatch.setattr(plan_module, "step_peak_flops", lambda *args: rate)
    shape = RunShape(config=cfg, micro_batch=2, devices=1, accumulation=1, device=torch.device("cpu"),
                     precision="32-true", autocast_dtype=None,
                     optimizer_factory=lambda model: torch.optim.AdamW(model.parameters()), steps=3, steps_per_epoch=3,
                     budget="max_steps", baseline=0)
    for one, two in [(7.4, 7.3), (7.3, 7.3 + block_seconds / 2)]:
        monkeypatch.setattr(plan_module, "time_steps", lambda run, c, steps=3: {1: one, 2: two}[c.n_layers])
        plan = plan_run(shape)
        assert plan.probe.per_block == pytest.approx(block_seconds) and plan.probe.noise == pytest.approx(two - one)
        assert plan.probe.rest == pytest.approx(one - block_seconds) and plan.mfu < 1
        assert (f"one and two blocks were timed, {(two - one) * 1e3:.1f} ms apart: less than a block's matmuls take "
                f"at the measured rate") in describe(plan)
    # A difference above the matmuls' time is the block's, as before.
    monkeypatch.setattr(plan_module, "time_steps",
                        lambda run, c, steps=3: {1: 7.3, 2: 7.3 + 2 * block_seconds}[c.n_layers])
    probe = plan_run(shape).probe
    assert probe.per_block == pytest.approx(2 * block_seconds) and probe.noise is None
    assert "a block adds" in describe(plan_run(shape))
