"""What the serving tests share: tiny weights written by the test, and serve.py run as a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from gptlit.core.model import GPTModel
from tests.conftest import ROOT

# conf/model/tiny.yaml with a context long enough for the long requests of the queue and disconnect tests.
TINY = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.1,
        "qkv_bias": False}
API_KEY = "test-key"
# One torch thread everywhere (server, generate.py, this process): on a machine shared with other jobs, two
# threads wait on each other at every small operation; and every side rounds alike.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def tiny_model(seed: int = 3, **changes) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel({**TINY, **changes}).eval()


def save_lightning_ckpt(model: GPTModel, path: Path) -> Path:
    """What a Lightning checkpoint of GPTLitModule holds, as far as serving reads it."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": model.cfg.to_dict()}}, path)
    return path


class Server:
    """``python serve.py ARGS port=0`` until ``stop()``; ``url`` once it answers /health."""

    def __init__(self, *args: str, log_dir: Path, timeout: float = 120):
        self.log = log_dir / f"serve-{time.monotonic_ns()}.log"
        self.args = args
        with open(self.log, "w") as out:
            # Output to a file: a pipe nobody reads would block the server once uvicorn's access log filled it.
            self.proc = subprocess.Popen([sys.executable, "serve.py", *args, "port=0"], cwd=ROOT, env=ENV,
                                         stdout=out, stderr=subprocess.STDOUT, text=True)
        self.url = self._wait_for_url(timeout)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"http://127\.0\.0\.1:(\d+)", self.output())
            if found:
                url = found.group(0)
                try:
                    if httpx.get(url + "/health", timeout=5).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve.py {' '.join(self.args)} exited {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"serve.py did not answer within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self) -> dict:
        return self.client.get("/health").json()

    def wait_for(self, predicate, timeout: float = 30) -> dict:
        """Poll /health until ``predicate(health)`` holds; returns that health."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if predicate(health) or time.monotonic() > deadline:
                return health
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_cli(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def run_engine(engine, jobs):
    """Submit (prompt ids, Sampling, step to submit at) jobs, step the engine until all are done; each job's
    tokens and finish reason."""
    out = [[] for _ in jobs]
    reasons = [None] * len(jobs)

    def listener(i):
        def on(kind, value):
            if kind == "token":
                out[i].append(value)
            else:
                reasons[i] = value
        return on

    step = 0
    with torch.inference_mode():
        while any(r is None for r in reasons):
            for i, (prompt, sampling, at) in enumerate(jobs):
                if at == step:
                    engine.submit(prompt, sampling, listener(i))
            engine.step()
            step += 1
    return out, reasons
