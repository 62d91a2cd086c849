import pytest
import torch
from hydra.utils import instantiate

from gptlit.training import precision
from gptlit.training.precision import default_precision, precision_dtype, register_resolver
from tests.conftest import compose_config


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def fake_cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    return path


def test_cpu_flags_come_from_the_first_processor(tmp_path):
    flags = precision.cpu_flags(fake_cpuinfo(tmp_path, "fpu avx512f amx_bf16 amx_tile"))
    assert flags == {"fpu", "avx512f", "amx_bf16", "amx_tile"}
    assert precision.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("fpu avx512f avx512_bf16 amx_bf16 amx_tile", "bf16-mixed"),
        # AVX512-BF16 without AMX runs bf16 matmuls slower than fp32 ones (bench/README.md).
        ("fpu avx512f avx512_bf16", "32-true"),
        ("fpu avx2", "32-true"),
    ],
)
def test_cpu_precision_follows_amx(monkeypatch, tmp_path, cpu_only, flags, expected):
    path, read = fake_cpuinfo(tmp_path, flags), precision.cpu_flags
    monkeypatch.setattr(precision, "cpu_flags", lambda: read(path))
    for accelerator in ("auto", "cpu"):
        assert default_precision(accelerator) == expected


@pytest.mark.parametrize("capability, expected", [((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed"), ((7, 5), "32-true")])
def test_cuda_precision_follows_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert default_precision("auto") == expected
    assert default_precision("gpu") == expected
    assert default_precision("cuda") == expected


def test_mps_trains_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert default_precision("auto") == "32-true"
    assert default_precision("mps") == "32-true"


def test_precision_dtype():
    assert precision_dtype("bf16-mixed") is torch.bfloat16
    assert precision_dtype("bf16-true") is torch.bfloat16
    assert precision_dtype("16-mixed") is torch.float16
    assert precision_dtype("32-true") is torch.float32
    assert precision_dtype(32) is torch.float32


def compose_train(*overrides):
    return compose_config("run_dir=unused", *overrides)


@pytest.mark.parametrize("trainer", ["default", "cpu"])
def test_config_defaults_to_the_machines_precision(trainer):
    cfg = compose_train(f"trainer={trainer}")
    assert cfg.trainer.precision == default_precision(cfg.trainer.accelerator)


@pytest.mark.parametrize("value", ["32-true", "bf16-mixed"])
def test_explicit_precision_overrides_the_default(value):
    assert compose_train(f"trainer.precision={value}").trainer.precision == value


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
