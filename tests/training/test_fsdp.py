"""trainer=fsdp (gptlit/training/fsdp.py): FSDP2 on two CPU processes over gloo, against DDP and the book's model."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from hydra.utils import instantiate
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from gptlit.core.families import build_model, model_config
from gptlit.data.shard_sampler import BatchShardSampler
from gptlit.data.text import TokenWindows
from gptlit.training.fsdp import FullyShardedStrategy, numbered
from gptlit.training.optimizer import AdamW
from gptlit.weights.io import read_weights

from ..conftest import compose_config
from ..evaluation.test_eval import write_hellaswag
from .test_distributed import eval_losses, final_weights, max_weight_diff, run_train


@pytest.mark.parametrize("model", ["gpt774m", "gpt1558m", "llama3_2_1b", "qwen3_0_6b"])
def test_trainer_fsdp_is_fsdp2_over_every_rank_of_every_node(model):
    cfg = compose_config(f"model={model}", "trainer=fsdp", "trainer.num_nodes=2", "run_dir=.")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FullyShardedStrategy) and cfg.trainer.num_nodes == 2
    assert strategy.activation_checkpointing and strategy.reshard_after_forward
    # One checkpoint file on rank zero, which generate.py, export.py and a single process read.
    assert strategy._save_distributed_checkpoint is False


@pytest.mark.parametrize("tied", [False, True])
def test_optimizer_state_keyed_by_name_becomes_the_single_process_state(tiny_cfg, tied):
    # torch's full optimizer state dict keys each parameter by its name; numbered() must give back exactly what
    # Optimizer.state_dict() gives, for two parameter groups and for a head tied to the embedding (one tensor
    # under two names, one optimizer entry).
    torch.manual_seed(0)
    model = build_model(model_config({**tiny_cfg, "context_length": 8}))
    if tied:
        model.out_head.weight = model.tok_emb.weight
    optimizer = AdamW(model, lr=1e-3, weight_decay=0.1, decay="matrices")
    model(torch.randint(0, 100, (2, 8))).sum().backward()
    optimizer.step()
    by_name = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    assert isinstance(next(iter(by_name["state"])), str)
    expected = optimizer.state_dict()
    ours = numbered(by_name)
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in expected["param_groups"]]
    assert ours["param_groups"] == expected["param_groups"]
    assert ours["state"].keys() == expected["state"].keys()
    for key, state in expected["state"].items():
        assert all(torch.equal(state[k], ours["state"][key][k]) for k in state), key


def uneven_evaluation(verdict_text: str, context: int, batch_size: int) -> list[int]:
    """The filler batches each of two ranks gets for the Verdict's val split."""
    from gptlit.core.tokenizer import load_tokenizer

    tokens = torch.tensor(load_tokenizer(None).encode(verdict_text[int(0.9 * len(verdict_text)):]))
    windows = TokenWindows(tokens, context, context)
    return [BatchShardSampler(windows, batch_size, 2, rank).filler_batches for rank in (0, 1)]


@pytest.mark.slow
def test_fsdp_trains_as_ddp_does_builds_once_and_exports_the_books_weights(tmp_path, verdict_path, verdict_text):
    # Two ranks, dropout on (each rank its own masks), shuffled, the same global batch: FSDP's losses are DDP's.
    # The val split gives 3 batches of 7 windows, so rank 1 runs a filler batch beside rank 0's second (before,
    # it stopped early and rank 0 waited forever in a block's all-gather); HellaSwag scores on both ranks.
    assert uneven_evaluation(verdict_text, 32, 7) == [0, 1]
    hellaswag = tmp_path / "hellaswag.jsonl"
    write_hellaswag(hellaswag, [("A man sits. He", ["stands up", "is a dog", "eats", "runs away fast"])] * 5,
                    [0, 1, 2, 3, 0])
    common = ("trainer.devices=2", "data.batch_size=7", "data.shuffle=true", "model.drop_rate=0.1",
              "callbacks=hellaswag", "callbacks.hellaswag.every_n_steps=3", f"callbacks.hellaswag.path={hellaswag}",
              "trainer.gradient_clip_val=0.3")  # the gradient norm is 0.36-0.46 here: every step is clipped
    ddp_dir, ddp_out = run_train(tmp_path / "ddp", verdict_path, "trainer=ddp", *common)
    probe = ("+callbacks.build._target_=tests.training_parts.ModelBuildProbe", f"+callbacks.build.dirpath={tmp_path}")
    fsdp_dir, fsdp_out = run_train(tmp_path / "fsdp", verdict_path, "trainer=fsdp", *common, *probe)

    # float32 arithmetic in another order (a reduce-scatter where DDP all-reduces, each rank updating its shard):
    # measured 1e-6 in the losses and 2e-6 in any weight after 6 steps, against 1e-2 that half the global batch
    # makes (test_distributed). Activation checkpointing replays the same dropout masks.
    torch.testing.assert_close(eval_losses(fsdp_dir), eval_losses(ddp_dir), rtol=0, atol=1e-5)
    assert max_weight_diff(final_weights(fsdp_dir), final_weights(ddp_dir)) < 1e-4
    # The norm of sharded gradients (DTensors) adds the shards' squares across ranks: DDP's norm, clipped alike
    # (measured within 2e-4 relative; one rank's shard alone would give about 0.7 of it).
    torch.testing.assert_close(grad_norms(fsdp_dir), grad_norms(ddp_dir), rtol=1e-3, atol=0)
    assert grad_norms(ddp_dir).min() > 0.3
    hellaswag_lines = [line for line in fsdp_out.splitlines() if line.startswith("HellaSwag at step")]
    assert hellaswag_lines == [line for line in ddp_out.splitlines() if line.startswith("HellaSwag at step")]
    assert len(hellaswag_lines) == 2

    # Built once: rank zero in full, rank one on the meta device; each then holds half of the weights.
    ranks = [json.loads((tmp_path / f"build-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["built_on"] for r in ranks] == ["cpu", "meta"]
    whole = ranks[0]["whole"]
    assert all(abs(r["held"] - whole / 2) < 0.01 * whole for r in ranks) and sum(r["held"] for r in ranks) >= whole

    # The export loads in the book's own GPTModel and gives our model's logits.
    from llms_from_scratch.ch04 import GPTModel as BookGPTModel

    weights = read_weights(fsdp_dir / "model.safetensors")
    ours = build_model(weights.config)
    ours.load_state_dict(weights.state)
    config = weights.config
    book = BookGPTModel({"vocab_size": config.vocab_size, "context_length": config.context_length,
                         "emb_dim": config.emb_dim, "n_heads": config.n_heads, "n_layers": config.n_layers,
                         "drop_rate": 0.0, "qkv_bias": config.qkv_bias})
    book.load_state_dict(torch.load(fsdp_dir / "model.pth", weights_only=True), strict=False)
    idx = torch.randint(0, config.vocab_size, (2, 16))
    torch.testing.assert_close(book.eval()(idx), ours.eval()(idx), rtol=0, atol=1e-5)


def grad_norms(run_dir) -> torch.Tensor:
    """train/grad_norm of every optimizer step, before clipping, from the run's CSV log."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return torch.tensor([float(r["train/grad_norm"]) for r in csv.DictReader(f) if r["train/grad_norm"]])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama3_tiny", "qwen3_tiny"])
def test_fsdp_trains_llama_and_qwen_with_their_tied_head_as_ddp_does(tmp_path, verdict_path, model):
    # Their head is the embedding (one tensor in the root's shard) and RoPE's tables are buffers outside the state
    # dict, computed on each rank after sharding. Three micro-batches a step: FSDP reduce-scatters after each
    # (the gradients stay sharded), DDP all-reduces after the last; the sums are the same.
    common = (f"model={model}", "trainer.devices=2", "trainer.max_steps=3", "trainer.val_check_interval=3",
              "data.batch_size=2", "trainer.tokens_per_step=384")
    ddp_dir, _ = run_train(tmp_path / "ddp", verdict_path, "trainer=ddp", *common)
    fsdp_dir, _ = run_train(tmp_path / "fsdp", verdict_path, "trainer=fsdp", *common)
    torch.testing.assert_close(eval_losses(fsdp_dir), eval_losses(ddp_dir), rtol=0, atol=1e-5)
    assert max_weight_diff(final_weights(fsdp_dir), final_weights(ddp_dir)) < 1e-4


@pytest.mark.slow
def test_an_fsdp_checkpoint_resumes_in_one_process_and_a_ddp_one_under_fsdp(tmp_path, verdict_path):
    # One checkpoint format for every strategy: FSDP's optimizer state is keyed as a single process keys it.
    # Epochs of 3 steps, so that each resume starts an epoch: the same windows in every strategy (two ranks of 2
    # windows and one process of 4 see the same, test_distributed), where a mid-epoch order cannot carry over
    # to another number of processes.
    epoch = "+trainer.limit_train_batches=3"
    fsdp_dir, _ = run_train(tmp_path / "fsdp", verdict_path, "trainer=fsdp", "trainer.devices=2", "trainer.max_steps=3",
                            epoch)
    one_dir, _ = run_train(tmp_path / "one", verdict_path, "trainer.max_steps=6", "data.batch_size=4", epoch,
                           f"ckpt_path={fsdp_dir / 'checkpoints' / 'last.ckpt'}")
    ddp_dir, _ = run_train(tmp_path / "ddp", verdict_path, "trainer=ddp", "trainer.devices=2", "trainer.max_steps=3",
                           epoch)
    back_dir, _ = run_train(tmp_path / "back", verdict_path, "trainer=fsdp", "trainer.devices=2", "trainer.max_steps=6",
                            epoch, f"ckpt_path={ddp_dir / 'checkpoints' / 'last.ckpt'}")
    whole_dir, _ = run_train(tmp_path / "whole", verdict_path, "trainer.max_steps=6", "data.batch_size=4", epoch)
    # Up to the order of float sums (test_distributed: 2e-5 in any weight after 6 steps).
    assert max_weight_diff(final_weights(one_dir), final_weights(whole_dir)) < 1e-4
    assert max_weight_diff(final_weights(back_dir), final_weights(whole_dir)) < 1e-4


@pytest.mark.slow
def test_the_books_schedule_under_fsdp_prints_ddps_lines(tmp_path, verdict_path):
    # BookSchedule runs the module's validation step itself, outside Lightning's loop: under FSDP every rank
    # must take part in it, or rank 0 waits in the first block's all-gather.
    book = ("experiment=book_ch5", "model=tiny", "trainer.devices=2", "trainer.max_steps=7", "model.drop_rate=0.1")
    lines = {}
    for trainer in ("ddp", "fsdp"):
        _, out = run_train(tmp_path / trainer, verdict_path, f"trainer={trainer}", *book)
        lines[trainer] = [line for line in out.splitlines() if line.startswith("Ep 1 (Step")]
    assert lines["fsdp"] == lines["ddp"] and len(lines["ddp"]) == 2, lines
