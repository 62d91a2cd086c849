"""The training precision that is fastest on the device at hand, decided by measuring it.

Whether bf16 pays cannot be read from a feature flag. This project's machines have run bf16 matmuls at half the
fp32 rate (a Sapphire Rapids VM with AVX512-BF16 but no AMX) and at four times it (an AMD EPYC with
AVX512-BF16), with the same flags for what matters. So the step's own matmul shapes are timed in fp32 and bf16
on the training device, and bf16-mixed is chosen when its matmuls run at least ``BF16_MARGIN`` times as fast:
autocast adds casts and keeps the non-matmul work in fp32, so a small matmul gain is eaten by the rest of the
step. The result is cached per machine, device, torch version, thread count and shapes
(``$GPTLIT_CACHE_DIR``, else ``~/.cache/gptlit``), so the probe costs its second or two once, not every run.

``trainer.precision=auto`` (conf/trainer/default.yaml) asks for the choice; it is made once, when the run is built
(gptlit.cli.build), by the process that starts the run, and handed to the ranks Lightning launches through the
environment, so every rank trains in the same precision and ``.hydra/config.yaml`` records the one used. An
explicit ``trainer.precision=...`` replaces it. MPS trains in fp32 without a probe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gptlit.core.device import resolve_device_type
from gptlit.core.model import GPTConfig
from gptlit.files import atomic_write
from gptlit.planning.flops import measure_matmul_flops, step_matmul_shapes

log = logging.getLogger(__name__)

BF16 = "bf16-mixed"
FP32 = "32-true"
AUTO = "auto"
# The choice of the process that built the run, inherited by the ranks that Lightning starts from it.
CHOSEN_ENV = "GPTLIT_PRECISION"
# bf16 matmuls must beat fp32 by this much before bf16-mixed is worth its casts (see the module docstring).
BF16_MARGIN = 1.5
# The probe's sizes are clamped to [PROBE_MIN, PROBE_TOKENS]: rates, not totals, decide, so more tokens only
# make the probe slower, and below PROBE_MIN a matmul's time is dispatch overhead rather than arithmetic (a
# tiny model would otherwise pick its precision by noise).
PROBE_TOKENS = 512
PROBE_MIN = 256


@dataclass
class Probe:
    """What was measured on a device: the step's matmul rates in both dtypes, and the choice they give."""

    device: str
    fp32_flops: float
    bf16_flops: float

    @property
    def speedup(self) -> float:
        return self.bf16_flops / self.fp32_flops

    @property
    def precision(self) -> str:
        return BF16 if self.speedup >= BF16_MARGIN else FP32

    def describe(self) -> str:
        return (
            f"precision {self.precision}: on {self.device} the step's matmuls ran {self.bf16_flops / 1e9:.1f} GFLOP/s "
            f"in bf16 and {self.fp32_flops / 1e9:.1f} GFLOP/s in fp32 ({self.speedup:.2f}x; bf16 needs "
            f"{BF16_MARGIN}x); pin it with trainer.precision=..."
        )


def cache_dir() -> Path:
    return Path(os.environ.get("GPTLIT_CACHE_DIR") or Path.home() / ".cache" / "gptlit")


def device_name(device: str) -> str:
    """What names the hardware: the GPU's name, or the CPU's model and feature flags (a VM may hide the
    model behind a generic name such as "AMD EPYC", but not the flags its kernels dispatch on)."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    info = cpu_info()
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = info.get("flags")
    return f"{name} [flags {hashlib.sha1(flags.encode()).hexdigest()[:8]}]" if flags else name


def cpu_info() -> dict[str, str]:
    """The kernel's description of the first CPU (model name, flags, ...); empty where there is no /proc/cpuinfo."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":
                break  # the first processor's entry is enough
    except OSError:
        pass
    return info


def measure(device: str, shapes: list[tuple[int, int, int, int]]) -> Probe:
    """Time ``shapes`` in fp32 and bf16 on ``device``; fp32 as training runs it (TF32 on CUDA)."""
    previous = torch.get_float32_matmul_precision()
    if device == "cuda":
        torch.set_float32_matmul_precision("high")  # what the FastFloat32Matmuls callback does for training
    try:
        fp32 = measure_matmul_flops(device, torch.float32, repeats=3, shapes=shapes)
        smallest = [min(shapes, key=lambda s: s[0] * s[1] * s[2])]
        fp32_small = measure_matmul_flops(device, torch.float32, repeats=1, shapes=smallest)
    finally:
        torch.set_float32_matmul_precision(previous)
    # Where bf16 is emulated (CPUs without AVX512-BF16 or AMX) it runs 10-100x slower than fp32, and timing the
    # output head in it would take minutes: the smallest shape alone settles that case.
    bf16_small = measure_matmul_flops(device, torch.bfloat16, repeats=1, shapes=smallest)
    if bf16_small < fp32_small:
        return Probe(device_name(device), fp32, bf16_small)
    return Probe(device_name(device), fp32, measure_matmul_flops(device, torch.bfloat16, repeats=3, shapes=shapes))


@functools.cache
def probe(device: str, emb_dim: int, vocab_size: int, tokens: int) -> Probe:
    """The measurement for these shapes on this machine: from the cache when it holds one, else measured
    (a few seconds at most) and cached."""
    shapes = step_matmul_shapes(
        GPTConfig(vocab_size=vocab_size, emb_dim=max(emb_dim, PROBE_MIN), n_heads=1, n_layers=1, context_length=1),
        min(max(tokens, PROBE_MIN), PROBE_TOKENS),
    )
    key = "|".join(
        [device_name(device), device, torch.__version__, f"threads={torch.get_num_threads()}", json.dumps(shapes)]
    )
    path = cache_dir() / "precision.json"
    try:
        cached = json.loads(path.read_text())
        if not isinstance(cached, dict):
            cached = {}
    except (OSError, ValueError):
        cached = {}  # missing or damaged: measure again and write a whole new file
    try:
        found = Probe(**cached[key])
        # Said once, when measured; a run that reads the cache says the precision in its summary line.
        log.debug(found.describe())
        return found
    except (KeyError, TypeError):
        found = measure(device, shapes)
        cached[key] = asdict(found)
        try:
            with atomic_write(path, "w") as f:
                json.dump(cached, f, indent=1)
        except OSError as err:  # a read-only home only costs a probe per run
            log.warning("could not cache the precision probe in %s (%s)", path, err)
    log.info(found.describe())
    return found


def default_precision(
    accelerator: str = "auto", emb_dim: int = 768, vocab_size: int = 50257, context_length: int = 256, batch_size: int = 2
) -> str:
    """bf16-mixed where the device at hand runs the step's matmuls fast enough in bf16, else 32-true."""
    device = resolve_device_type(accelerator)
    if device not in ("cpu", "cuda"):
        return FP32
    return probe(device, int(emb_dim), int(vocab_size), int(context_length) * int(batch_size)).precision


def training_precision(requested, accelerator: str, emb_dim: int, vocab_size: int, context_length: int,
                       batch_size: int) -> str:
    """``requested`` as it is, or for ``auto`` the measured choice: the launching process's where this process is a
    rank it started, else measured here and handed on to the ranks this process will start."""
    if str(requested) != AUTO:
        return requested
    chosen = os.environ.get(CHOSEN_ENV)
    if not chosen:
        chosen = default_precision(accelerator, emb_dim, vocab_size, context_length, batch_size)
        os.environ[CHOSEN_ENV] = chosen
    return chosen
