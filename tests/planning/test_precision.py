import json
import os

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gptlit.planning import precision
from gptlit.core.device import precision_dtype
from gptlit.cli.build import decide_precision
from gptlit.planning.precision import BF16_MARGIN, CHOSEN_ENV, Probe, default_precision
from tests.conftest import compose_config


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty probe cache of this test's own, and no probe remembered by the process."""
    monkeypatch.setenv("GPTLIT_CACHE_DIR", str(tmp_path))
    precision.probe.cache_clear()
    yield tmp_path / "precision.json"
    precision.probe.cache_clear()


@pytest.fixture
def measured(monkeypatch, cache):
    """Replace the timing with given rates; counts the measurements made."""
    calls = []

    def set_rates(fp32: float, bf16: float):
        def fake(device, shapes):
            calls.append((device, shapes))
            return Probe(f"fake {device}", fp32, bf16)

        monkeypatch.setattr(precision, "measure", fake)
        return calls

    return set_rates


@pytest.mark.parametrize(
    "fp32, bf16, expected",
    [
        (170e9, 750e9, "bf16-mixed"),  # AVX512-BF16 on AMD EPYC: about 4x
        (259e9, 145e9, "32-true"),  # AVX512-BF16 without AMX on a Sapphire Rapids VM: slower
        (50e9, 1e9, "32-true"),  # AVX2 only: bf16 emulated
        (100e9, 100e9 * BF16_MARGIN, "bf16-mixed"),
        (100e9, 100e9 * BF16_MARGIN * 0.99, "32-true"),  # faster, but not by enough to pay for the casts
    ],
)
def test_precision_follows_the_measured_speedup(monkeypatch, measured, fp32, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    measured(fp32, bf16)
    assert default_precision("cpu") == expected
    assert default_precision("auto") == expected


def test_cuda_is_measured_too(monkeypatch, measured):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    calls = measured(60e12, 700e12)
    assert default_precision("gpu") == "bf16-mixed" and calls[0][0] == "cuda"


def test_mps_trains_in_fp32_without_a_probe(monkeypatch, measured):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    calls = measured(1e9, 1e12)
    assert default_precision("auto") == "32-true" and default_precision("mps") == "32-true"
    assert calls == []


def test_the_probe_is_cached_per_machine_and_shapes(measured, cache, monkeypatch):
    calls = measured(170e9, 750e9)
    default_precision("cpu", 768, 50257, 256, 2)
    precision.probe.cache_clear()  # as a new process would start
    default_precision("cpu", 768, 50257, 256, 2)
    assert len(calls) == 1
    stored = json.loads(cache.read_text())
    assert [v["bf16_flops"] for v in stored.values()] == [750e9]
    # Other shapes, or another thread count (a different machine share), are measured anew.
    default_precision("cpu", 1024, 50257, 256, 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    precision.probe.cache_clear()
    default_precision("cpu", 768, 50257, 256, 2)
    assert len(calls) == 3 and len(json.loads(cache.read_text())) == 3


def test_a_damaged_cache_is_measured_again_and_rewritten(measured, cache):
    cache.write_text('{"half a fi')
    calls = measured(50e9, 1e9)
    assert default_precision("cpu") == "32-true" and len(calls) == 1
    assert len(json.loads(cache.read_text())) == 1


def test_the_real_probe_times_both_dtypes_on_this_cpu(cache, caplog):
    caplog.set_level("INFO", logger=precision.__name__)
    found = precision.probe("cpu", 32, 64, 64)  # clamped up to the smallest sizes the probe times
    assert found.fp32_flops > 0 and found.bf16_flops > 0
    assert found.precision == ("bf16-mixed" if found.bf16_flops >= BF16_MARGIN * found.fp32_flops else "32-true")
    # The log says what was measured and what was chosen.
    assert f"precision {found.precision}: on " in caplog.text and "GFLOP/s in bf16" in caplog.text


def compose_train(*overrides):
    return compose_config("run_dir=unused", *overrides)


@pytest.mark.parametrize("trainer", ["default", "cpu"])
def test_build_decides_the_measured_precision_of_its_own_shapes(measured, trainer, monkeypatch, tmp_path):
    monkeypatch.setenv(CHOSEN_ENV, "")  # restored at teardown
    calls = measured(170e9, 750e9)
    cfg = compose_config(f"run_dir={tmp_path}", f"trainer={trainer}", "model=gpt355m", "data.context_length=128")
    assert cfg.trainer.precision == "auto"  # composing measures nothing: --cfg job --resolve is pure
    assert calls == []
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    decide_precision(cfg)
    assert cfg.trainer.precision == "bf16-mixed"
    (device, shapes), = calls
    assert device == "cpu" and shapes[1] == (256, 1024, 4096, 1)  # 2 x 128 tokens, emb_dim 1024
    # The run's record says what was used, and the ranks Lightning starts inherit the choice without measuring.
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").trainer.precision == "bf16-mixed"
    assert os.environ[CHOSEN_ENV] == "bf16-mixed"
    precision.probe.cache_clear()
    again = compose_config(f"run_dir={tmp_path}", f"trainer={trainer}")
    decide_precision(again)
    assert again.trainer.precision == "bf16-mixed" and len(calls) == 1


@pytest.mark.parametrize("value", ["32-true", "bf16-mixed"])
def test_explicit_precision_overrides_the_default(measured, value, monkeypatch):
    monkeypatch.setenv(CHOSEN_ENV, "")  # restored at teardown
    calls = measured(1.0, 1.0)
    cfg = compose_train(f"trainer.precision={value}")
    decide_precision(cfg)
    assert cfg.trainer.precision == value
    assert calls == [] and os.environ[CHOSEN_ENV] == ""


def test_precision_dtype():
    assert precision_dtype("bf16-mixed") is torch.bfloat16
    assert precision_dtype("bf16-true") is torch.bfloat16
    assert precision_dtype("16-mixed") is torch.float16
    assert precision_dtype("32-true") is torch.float32
    assert precision_dtype(32) is torch.float32


def test_configured_adamw_is_fused_and_steps_like_the_books_adamw():
    factory = instantiate(compose_train().optimizer)
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 7)), torch.nn.Parameter(torch.randn(7))]
    book = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    fused = factory(ours)
    reference = torch.optim.AdamW(book, lr=0.0004, weight_decay=0.1)
    assert fused.defaults["fused"] is True
    for _ in range(3):
        grads = [torch.randn_like(p) for p in ours]
        for params, optimizer in ((ours, fused), (book, reference)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(ours, book):
        torch.testing.assert_close(a, b)
