"""The paths that differ on Windows, checked with the platform mocked: there os.kill(pid, 0) terminates the process
that has the id, and neither the fork server nor the resource module exists."""

from __future__ import annotations

import multiprocessing
import os
import sys
import types

from gptlit import files
from gptlit.data import token_cache


def pretend_windows(monkeypatch):
    """os.name as on Windows, and an os.kill that fails the test if it is called at all."""

    def kill(pid, sig):
        raise AssertionError(f"os.kill({pid}, {sig}) called on Windows, where it terminates the process")

    monkeypatch.setattr(os, "kill", kill)
    # Only os.name: pathlib must keep making PosixPaths here, so Paths are made before the fixture runs.
    monkeypatch.setattr(os, "name", "nt")


def fake_psutil(alive: set[int]) -> types.SimpleNamespace:
    return types.SimpleNamespace(pid_exists=lambda pid: pid in alive)


def stale_file(folder, pid: int):
    tmp = folder / f".model.pt.{pid}@{files._host()}.abc.tmp"
    tmp.write_bytes(b"half")
    return tmp


def test_a_writers_liveness_is_asked_of_psutil_on_windows(tmp_path, monkeypatch):
    target, dead, alive = tmp_path / "model.pt", stale_file(tmp_path, 999991), stale_file(tmp_path, 999992)
    monkeypatch.setitem(sys.modules, "psutil", fake_psutil({999992}))
    with monkeypatch.context() as patch:
        pretend_windows(patch)
        files._remove_stale(target)
    assert not dead.exists() and alive.exists()


def test_without_psutil_every_writer_counts_as_alive_on_windows(tmp_path, monkeypatch):
    target, left = tmp_path / "model.pt", stale_file(tmp_path, 999991)
    monkeypatch.setitem(sys.modules, "psutil", None)
    with monkeypatch.context() as patch:
        pretend_windows(patch)
        files._remove_stale(target)
    assert left.exists()  # kept: asking would have meant terminating whatever process has that id


def test_elsewhere_a_dead_writers_file_is_still_removed(tmp_path):
    target, dead = tmp_path / "model.pt", stale_file(tmp_path, 999991)
    files._remove_stale(target)
    assert not dead.exists()


def test_workers_are_spawned_where_there_is_no_fork_server(monkeypatch):
    assert token_cache.worker_context().get_start_method() == "forkserver"
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert token_cache.worker_context().get_start_method() == "spawn"
