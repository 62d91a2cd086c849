"""The planner's memory readings on macOS and Windows, checked here with the platform mocked."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch

from gptlit.core import device as device_module
from gptlit.planning import plan as plan_module
from tests.conftest import ROOT


def fake_rusage(maxrss: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(getrusage=lambda who: types.SimpleNamespace(ru_maxrss=maxrss), RUSAGE_SELF=0)


@pytest.mark.parametrize("platform, expected", [("linux", 5000 * 1024), ("darwin", 5000)])
def test_peak_rss_reads_kib_on_linux_and_bytes_on_macos(monkeypatch, platform, expected):
    monkeypatch.setattr(plan_module, "resource", fake_rusage(5000))
    monkeypatch.setattr(sys, "platform", platform)
    assert plan_module.process_rss() == expected


def test_peak_rss_without_getrusage_is_psutils_or_unknown(monkeypatch):
    monkeypatch.setattr(plan_module, "resource", None)  # Windows
    monkeypatch.setitem(sys.modules, "psutil", None)
    assert plan_module.process_rss() == 0
    memory_info = types.SimpleNamespace(peak_wset=123456)
    psutil = types.SimpleNamespace(Process=lambda: types.SimpleNamespace(memory_info=lambda: memory_info))
    monkeypatch.setitem(sys.modules, "psutil", psutil)
    assert plan_module.process_rss() == 123456


def no_proc(path, *args, **kwargs):
    raise FileNotFoundError(path)


def test_available_memory_without_proc_asks_psutil_then_sysconf(monkeypatch):
    monkeypatch.setattr(plan_module, "open", no_proc, raising=False)  # macOS, Windows: no /proc/meminfo
    psutil = types.SimpleNamespace(virtual_memory=lambda: types.SimpleNamespace(available=7 * 2**30))
    monkeypatch.setitem(sys.modules, "psutil", psutil)
    assert plan_module.available_memory(torch.device("mps")) == 7 * 2**30
    monkeypatch.setitem(sys.modules, "psutil", None)
    pages = {"SC_PAGE_SIZE": 16384, "SC_AVPHYS_PAGES": 1000}
    monkeypatch.setattr(plan_module.os, "sysconf", lambda name: pages[name])
    assert plan_module.available_memory(torch.device("cpu")) == 16384 * 1000


def test_available_memory_is_unknown_without_any_source(monkeypatch):
    monkeypatch.setattr(plan_module, "open", no_proc, raising=False)
    monkeypatch.setitem(sys.modules, "psutil", None)

    def unknown(name):  # macOS has no SC_AVPHYS_PAGES
        raise ValueError(f"unrecognized configuration name: {name}")

    monkeypatch.setattr(plan_module.os, "sysconf", unknown)
    assert plan_module.available_memory(torch.device("cpu")) == 0
    monkeypatch.delattr(plan_module.os, "sysconf")  # Windows
    assert plan_module.available_memory(torch.device("cpu")) == 0


def test_step_timing_waits_for_an_apple_gpu(monkeypatch):
    # time_steps reads the clock after gptlit.core.device.synchronize, which must wait for MPS's queue.
    waited = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append("mps"))
    device_module.synchronize(torch.device("mps"))
    assert waited == ["mps"]


def test_the_planner_imports_without_resource():
    # A fresh interpreter, as on Windows, where the resource module does not exist.
    code = ("import sys; sys.modules['resource'] = None; sys.modules['psutil'] = None\n"
            "from gptlit.planning import plan\nassert plan.resource is None and plan.process_rss() == 0")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
