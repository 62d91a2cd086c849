"""optimizer=muon: Muon holds the blocks' matrices, AdamW the rest, each parameter once; a run under it logs each
group's rate and resumes bit for bit (both optimizers' states)."""

from __future__ import annotations

import pytest
import torch

from gptlit.cli.build import fit
from gptlit.core.llama import LlamaConfig, LlamaModel
from gptlit.core.model import GPTConfig, GPTModel
from gptlit.errors import UserError
from gptlit.training.muon import DtypeMuon, MuonAdamW


@pytest.mark.parametrize("model", [
    GPTModel(GPTConfig(vocab_size=100, context_length=16, emb_dim=16, n_heads=2, n_layers=2, qkv_bias=True)),
    LlamaModel(LlamaConfig(family="qwen3", vocab_size=100, context_length=16, emb_dim=16, n_heads=2, n_kv_groups=1,
                           n_layers=2, hidden_dim=32, qk_norm=True)),
], ids=["gpt2", "qwen3-tied"])
def test_groups_hold_every_parameter_once_with_the_right_optimizer(model):
    optimizer = MuonAdamW(model)
    muon = {id(p) for p in optimizer.muon.param_groups[0]["params"]}
    adamw = {id(p) for p in optimizer.adamw.param_groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert not muon & adamw and muon | adamw == set(names)
    assert {names[i] for i in muon} == {n for n, p in model.named_parameters() if n.startswith("trf_blocks.")
                                        and p.ndim == 2}
    assert "tok_emb.weight" in {names[i] for i in adamw}  # the embedding, and a tied head with it
    assert [g["name"] for g in optimizer.param_groups] == ["muon", "adamw"]
    assert optimizer.param_groups[0]["lr"] == 0.02 and optimizer.param_groups[1]["lr"] == 0.004


def test_a_step_moves_matrices_by_an_orthogonalized_update():
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(family="llama3", vocab_size=50, context_length=8, emb_dim=16, n_heads=2,
                                   n_kv_groups=2, n_layers=1, hidden_dim=16))
    optimizer = MuonAdamW(model, lr=0.1, momentum=0.0, nesterov=False)
    weight = model.trf_blocks[0].ff.fc3.weight  # 16 x 16
    before = weight.detach().clone()
    # 64 tokens: a gradient of full rank (a few tokens give one of rank a few, whose other directions stay 0).
    model(torch.randint(0, 50, (8, 8))).logsumexp(-1).sum().backward()
    optimizer.step()
    update = (before - weight.detach()) / 0.1
    # Newton-Schulz makes the update's singular values about 1 (roughly, after five iterations): not the gradient.
    singular = torch.linalg.svdvals(update)
    assert singular.max() < 1.3 and singular.median() > 0.5


def _steps(optimizer_class, params, grads, **kwargs):
    params = [p.detach().clone().requires_grad_() for p in params]
    optimizer = optimizer_class(params, lr=0.05, weight_decay=0.1, **kwargs)
    for grad in grads:
        for param, g in zip(params, grad):
            param.grad = g.clone()
        optimizer.step()
    return params, optimizer


def test_newton_schulz_in_bfloat16_is_torchs_muon_bit_for_bit_and_float32_close():
    torch.manual_seed(0)
    shapes = [(16, 48), (48, 16), (32, 32)]  # wide, tall (iterated transposed) and square
    params = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    torchs, _ = _steps(torch.optim.Muon, params, grads)
    ours, _ = _steps(DtypeMuon, params, grads, ns_dtype="bfloat16")
    fp32, optimizer = _steps(DtypeMuon, params, grads, ns_dtype="float32")
    for reference, bf16, f32 in zip(torchs, ours, fp32):
        assert torch.equal(bf16, reference)
        assert not torch.equal(f32, reference)
        torch.testing.assert_close(f32, reference, atol=0.02, rtol=0)  # within bfloat16's rounding of the update
    assert optimizer.state_dict()["ns_dtype"] == "float32"


def test_auto_measures_the_dtype_once_and_a_checkpoint_keeps_it():
    params = [torch.randn(8, 8)]
    _, optimizer = _steps(DtypeMuon, params, [[torch.randn(8, 8)]])
    chosen = optimizer.state_dict()["ns_dtype"]
    assert chosen in ("bfloat16", "float32")
    other = "float32" if chosen == "bfloat16" else "bfloat16"
    _, resumed = _steps(DtypeMuon, params, [], ns_dtype="auto")
    resumed.load_state_dict({**optimizer.state_dict(), "ns_dtype": other})
    assert resumed.ns_dtype == other  # what the run measured, not a new measurement
    with pytest.raises(UserError, match="ns_dtype=float16"):
        DtypeMuon(params, ns_dtype="float16")


def test_run_under_muon_logs_each_rate_and_resumes_bit_for_bit(tmp_path, train_cfg):
    common = ["model=qwen3_tiny", "optimizer=muon", "scheduler=wsd", "scheduler.warmup_steps=1",
              "+trainer.limit_train_batches=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
              "callbacks.export_weights=null", "trainer.gradient_clip_val=1.0"]
    # The schedule spans the whole run, so the checkpoint to resume from is the straight run's own, after step 4
    # (mid-epoch, as the interrupt handler writes one).
    mid_run = ("+callbacks.mid_run={_target_:lightning.pytorch.callbacks.ModelCheckpoint,"
               f"dirpath:{tmp_path / 'mid'},filename:step4,every_n_train_steps:4,save_top_k:1,monitor:null}}")
    straight = fit(train_cfg(*common, "trainer.max_epochs=2", mid_run, run_dir=tmp_path / "a"))
    logged = straight.logged_metrics
    assert {"train/lr", "train/lr_muon", "train/lr_adamw"} <= set(logged)
    # The last step's rates: WSD's decay (the last 40% of 6 steps: 2) ends at 1/2 of each peak on step 5.
    assert logged["train/lr_muon"].item() == pytest.approx(0.02 / 2)
    assert logged["train/lr_adamw"].item() == pytest.approx(0.004 / 2)
    resumed = fit(train_cfg(*common, "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'mid' / 'step4.ckpt'}",
                            run_dir=tmp_path / "c"))
    a, b = resumed.lightning_module.model.state_dict(), straight.lightning_module.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.lightning_module.history[-1] == straight.lightning_module.history[-1]
    # Both optimizers' states came back: Muon's momentum buffers and AdamW's moments equal the straight run's.
    sa, sb = resumed.optimizers[0].state_dict(), straight.optimizers[0].state_dict()
    for part in ("muon", "adamw"):
        for index, state in sa[part]["state"].items():
            for key, value in state.items():
                assert torch.equal(value, sb[part]["state"][index][key]), (part, index, key)


def test_sharded_parameters_are_refused(monkeypatch):
    model = GPTModel(GPTConfig(vocab_size=100, context_length=16, emb_dim=16, n_heads=2, n_layers=1))
    FlatParameter = type("FlatParameter", (torch.nn.Parameter,), {})  # what FSDP's flattening leaves
    model.trf_blocks[0].att.W_query.weight = FlatParameter(torch.zeros(16 * 16))
    with pytest.raises(UserError, match="trainer=fsdp"):
        MuonAdamW(model)


@pytest.mark.parametrize("family", ["gpt2", "qwen3"])
def test_the_planner_counts_muons_state(family):
    from gptlit.planning.plan import optimizer_state_bytes

    if family == "gpt2":
        cfg = GPTConfig(vocab_size=100, context_length=16, emb_dim=16, n_heads=2, n_layers=2)
        model = GPTModel(cfg)
    else:
        cfg = LlamaConfig(family="qwen3", vocab_size=100, context_length=16, emb_dim=16, n_heads=2, n_kv_groups=1,
                          n_layers=2, hidden_dim=32, qk_norm=True)
        model = LlamaModel(cfg)
    optimizer = MuonAdamW(model)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    held = sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t) and t.ndim > 0)  # AdamW's step counters are scalars
    assert optimizer_state_bytes(cfg, muon=True) == held
