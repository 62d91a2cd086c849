"""What a training run will cost, before it runs: memory, FLOPs, step time and the whole run's time.

Memory is predicted from the config alone, so a plan can be made for a model that would not fit. Parameters
(with the embeddings) need 4 bytes each for the fp32 weights, 4 for their gradients and 8 for AdamW's two
moments. Activations are what autograd keeps for the backward pass, counted on this model with saved-tensor
hooks (tests/planning/test_plan.py holds the formula to that count) per token of a micro-batch:

- per transformer block 16 * emb_dim floats; 0.75 * emb_dim more when dropout is on (its one-byte masks and
  outputs; 2.25 * emb_dim with the book's kernels on a CPU, whose torch dropout keeps a float mask);
  2.25 * n_heads * context more where attention runs the explicit masked softmax (the book's kernels, or
  dropout on a CPU, where SDPA's fused kernels have none), which keeps the attention weights before and after
  dropout and the mask (3 * n_heads * context with a float mask);
- once, vocab_size + 3 * emb_dim: the logits and the embedding and final-norm outputs;
- with the book's kernels, 16 * emb_dim more per block and 2 * emb_dim once: its written-out GELU keeps three
  4 * emb_dim intermediates and each written-out LayerNorm two emb_dim ones;

plus, at the peak in the backward pass, the logits' gradient and the loss's log-softmax (2 * vocab_size floats
per token). On a CPU the process itself (Python, torch, Lightning, the tokenizer: several hundred MB) is part of
the resident memory a run is measured by; it is measured here, in this process, after importing the same.

Sharded (FSDP2, trainer=fsdp) over N ranks, each rank holds a chunk of the first dimension of every parameter,
ceil(rows / N) rows, and as much of its gradient and AdamW state; a block's full weights are gathered while it
runs, with the next block's prefetched (two blocks at once), and the embeddings' and head's (the root's) while
they run. With activation checkpointing a block keeps only its input (emb_dim floats per token) until the
backward pass recomputes it, one block at a time. Not counted: a unit's full gradients between its backward and
their reduce-scatter, and the collectives' buffers; nothing here has been measured on a GPU.

Time comes from a probe of the real step: one and two transformer blocks of the configured width trained for a
few steps on the device, in the configured precision, with the configured optimizer. A block's time is the
difference, at least its matmuls' time at the device's measured rate (a load that comes or goes between the two
timings can swallow the difference), the rest (embeddings, output head, loss, optimizer) the remainder, and the
full depth is extrapolated from them; the probe needs the memory of two blocks, not of the model. With activation
checkpointing its blocks are recomputed in the backward pass as training's are. It runs on one device, unsharded:
a sharded run's all-gathers and reduce-scatters are not in its time.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from gptlit.core.device import synchronize
from gptlit.core.families import ModelConfig, build_model
from gptlit.core.recompute import recompute_in_backward
from gptlit.errors import UserError
from gptlit.files import human_bytes
from gptlit.planning.flops import matmul_parameters, step_peak_flops, training_flops_per_token

try:
    import resource
except ImportError:  # Windows has no getrusage
    resource = None

FP32_BYTES = 4
ADAMW_STATE_BYTES = 8
# The share of device memory a plan may fill on a GPU: the allocator's cache and fragmentation need the rest.
GPU_USABLE = 0.9


def parameter_count(cfg: ModelConfig) -> int:
    """Every parameter of the model, from the config alone: the matmul weights plus the embedding tables (GPT-2's
    tokens and positions; Llama 3's and Qwen3's tokens, none apart where the head is the embedding)."""
    if cfg.family == "gpt2":
        return matmul_parameters(cfg) + (cfg.vocab_size + cfg.context_length) * cfg.emb_dim
    return matmul_parameters(cfg) + (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.emb_dim)


def parameter_shapes(cfg: ModelConfig) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(One transformer block's parameters, the rest's: embeddings, final norm, head), each as (rows, elements
    per row): FSDP2 shards a parameter by rows, its first dimension. A tied head is the embedding, once."""
    d, v = cfg.emb_dim, cfg.vocab_size
    if cfg.family == "gpt2":
        attention = [(d, d)] * 4 + [(d, 1)] * (4 if cfg.qkv_bias else 1)
        feed_forward = [(4 * d, d), (4 * d, 1), (d, 4 * d), (d, 1)]
        return attention + feed_forward + [(d, 1)] * 4, [(v, d), (cfg.context_length, d), (d, 1), (d, 1), (v, d)]
    q, kv, hidden = cfg.n_heads * cfg.head_dim, cfg.n_kv_groups * cfg.head_dim, cfg.hidden_dim
    block = [(q, d), (kv, d), (kv, d), (d, q), (hidden, d), (hidden, d), (d, hidden), (d, 1), (d, 1)]
    if cfg.qk_norm:
        block += [(cfg.head_dim, 1)] * 2
    return block, [(v, d), (d, 1)] + ([] if cfg.tie_embeddings else [(v, d)])


def sharded_elements(shapes: list[tuple[int, int]], shards: int) -> int:
    """Elements one rank holds of ``shapes`` split ``shards`` ways. FSDP2 cuts each parameter as torch.chunk does,
    into chunks of ceil(rows / shards) rows (the last ones shorter or empty), and gives every rank storage for the
    first, the largest: its gradients are views into equally padded buffers, and rank zero's AdamW state is that
    size too."""
    return sum(-(-rows // shards) * row for rows, row in shapes)


def math_attention(cfg: ModelConfig, device_type: str) -> bool:
    """Whether attention keeps its weights for the backward pass (see the module docstring)."""
    return cfg.book_kernels or (device_type == "cpu" and cfg.drop_rate > 0)


def activation_bytes_per_token(cfg: ModelConfig, device_type: str, seq_len: int | None = None,
                               checkpointing: bool = False) -> float:
    """Activation bytes per token of a micro-batch at the backward pass's peak; with ``checkpointing`` each block
    keeps only its input, and one block at a time holds its own while the backward pass recomputes it."""
    seq_len = seq_len or cfg.context_length
    if cfg.family == "gpt2":
        block, once = _gpt2_activation_floats(cfg, device_type, seq_len)
    else:
        block, once = _llama_activation_floats(cfg, seq_len)
    kept = cfg.n_layers * cfg.emb_dim + block if checkpointing else cfg.n_layers * block
    backward_peak = 2 * cfg.vocab_size
    return FP32_BYTES * (kept + once + backward_peak)


def _gpt2_activation_floats(cfg: ModelConfig, device_type: str, seq_len: int) -> tuple[float, float]:
    """GPT-2's floats per token: (per block, once), as the module docstring counts them."""
    d = cfg.emb_dim
    # A dropout mask is a float per element with torch's CPU dropout (the book's kernels), a byte elsewhere.
    mask = 1.0 if cfg.book_kernels and device_type == "cpu" else 0.25
    block = (16 * d + ((2 * mask + 0.25) * d if cfg.drop_rate > 0 else 0)
             + ((2 + mask) * cfg.n_heads * seq_len if math_attention(cfg, device_type) else 0))
    once = cfg.vocab_size + 3 * d
    if cfg.book_kernels:
        # The written-out GELU keeps three more 4d tensors, each written-out LayerNorm two more d tensors.
        block += 16 * d
        once += 2 * d
    return block, once


def _llama_activation_floats(cfg: ModelConfig, seq_len: int) -> tuple[float, float]:
    """Llama 3 / Qwen3's floats per token, (per block, once), as autograd's saved-tensor hooks count them
    (tests/planning/test_plan.py).

    Per block: 6 * emb_dim (the block's input, the two RMSNorms' inputs and outputs, the residual sum),
    2 * (n_heads + n_kv_groups) * head_dim (rotated queries and keys, values, attention output, the heads merged
    again), 4 * hidden_dim (the SwiGLU's two projections, its gate and product) and n_heads + 2 (attention's
    log-sum-exp, the norms' reciprocal RMS); Qwen3's QK-norm keeps 3 query-widths and 2 key-widths more and its
    own reciprocal RMS. Once: the logits' log-softmax (vocab_size), the embedding and final norm (3 * emb_dim),
    the ids. With dropout (off in both families' recipes) attention falls back to the explicit softmax on a CPU,
    keeping about 3 * n_heads * seq_len and 3 query-widths more per block: an estimate, within a few percent.
    """
    d, q, kv = cfg.emb_dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_groups * cfg.head_dim
    block = 6 * d + 2 * q + 2 * kv + 4 * cfg.hidden_dim + cfg.n_heads + 2
    if cfg.qk_norm:
        block += 3 * q + 2 * kv + cfg.n_heads + cfg.n_kv_groups
    once = cfg.vocab_size + 3 * d + 3
    if cfg.drop_rate > 0:
        block += 3 * cfg.n_heads * seq_len + 3 * q
        once += d
    return block, once


@dataclass
class MemoryPlan:
    weights: int
    gradients: int
    optimizer: int
    activations: int  # per micro-batch
    baseline: int  # the process itself (CPU) or nothing (GPU: allocated memory is what is compared)
    gathered: int = 0  # sharded: the full weights of the units running now, beside each rank's shard

    @property
    def peak(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.gathered + self.activations + self.baseline


def block_matrix_parameters(cfg: ModelConfig) -> int:
    """The transformer blocks' weight matrices, which optimizer=muon gives to Muon."""
    d = cfg.emb_dim
    if cfg.family == "gpt2":
        return cfg.n_layers * 12 * d * d
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_groups * cfg.head_dim
    return cfg.n_layers * (2 * d * q + 2 * d * kv + 3 * d * cfg.hidden_dim)


def optimizer_state_bytes(cfg: ModelConfig, muon: bool = False) -> int:
    """AdamW keeps two fp32 moments per parameter; Muon one momentum buffer per matrix element."""
    n = parameter_count(cfg)
    if not muon:
        return n * ADAMW_STATE_BYTES
    matrices = block_matrix_parameters(cfg)
    return matrices * FP32_BYTES + (n - matrices) * ADAMW_STATE_BYTES


def plan_memory(cfg: ModelConfig, micro_batch: int, seq_len: int, device_type: str, baseline: int = 0,
                muon: bool = False, shards: int = 1, checkpointing: bool = False) -> MemoryPlan:
    """One device's memory: of the whole model (``shards`` 1), or of a rank of a run sharded ``shards`` ways;
    ``checkpointing``: the blocks' activations recomputed in the backward pass."""
    activations = int(activation_bytes_per_token(cfg, device_type, seq_len, checkpointing) * micro_batch * seq_len)
    if shards == 1:
        n = parameter_count(cfg)
        return MemoryPlan(weights=n * FP32_BYTES, gradients=n * FP32_BYTES, optimizer=optimizer_state_bytes(cfg, muon),
                          activations=activations, baseline=baseline)
    if muon:
        raise UserError("optimizer=muon orthogonalizes whole matrices, and trainer=fsdp shards them; plan with "
                        "trainer=ddp or one device, or use optimizer=adamw")
    block, root = parameter_shapes(cfg)
    held = cfg.n_layers * sharded_elements(block, shards) + sharded_elements(root, shards)
    # The root's weights stay gathered from its embeddings to its head; FSDP2 prefetches the next block's while
    # one runs, forward and backward alike.
    gathered = sharded_elements(root, 1) + min(2, cfg.n_layers) * sharded_elements(block, 1)
    return MemoryPlan(weights=held * FP32_BYTES, gradients=held * FP32_BYTES, optimizer=held * ADAMW_STATE_BYTES,
                      activations=activations, baseline=baseline, gathered=gathered * FP32_BYTES)


def largest_micro_batch(cfg: ModelConfig, seq_len: int, device_type: str, capacity: int, shards: int = 1,
                        checkpointing: bool = False) -> int:
    """The largest micro-batch whose predicted peak fits ``capacity`` bytes (GPU_USABLE of it); 0 if none."""
    fixed = plan_memory(cfg, 0, seq_len, device_type, shards=shards, checkpointing=checkpointing)
    per_sample = activation_bytes_per_token(cfg, device_type, seq_len, checkpointing) * seq_len
    return max(0, int((GPU_USABLE * capacity - fixed.peak) // per_sample))


def fewest_shards(cfg: ModelConfig, micro_batch: int, seq_len: int, device_type: str, capacity: int,
                  baseline: int = 0, checkpointing: bool = True, most: int = 4096) -> int | None:
    """The fewest ranks a sharded run needs for each one's peak, less ``baseline`` (the process that measured
    ``capacity`` is already in it), to fit ``capacity`` bytes; None if ``most`` are not enough (the activations
    alone do not fit)."""
    def fits(shards: int) -> bool:
        memory = plan_memory(cfg, micro_batch, seq_len, device_type, baseline, shards=shards,
                             checkpointing=checkpointing)
        return memory.peak - baseline <= capacity

    if not fits(most):
        return None
    # Each rank's share only shrinks as the ranks grow (by whole rows), so the first that fits is found by halving.
    low, high = 2, most
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle + 1, high)
    return low


def process_rss() -> int:
    """This process's peak resident memory in bytes; 0 where unknown (Windows, without psutil)."""
    if resource is None:
        try:
            import psutil
        except ImportError:
            return 0
        return int(psutil.Process().memory_info().peak_wset)  # Windows' peak working set
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # getrusage's unit differs: macOS reports bytes, Linux (and the other Unixes) KiB.
    return peak if sys.platform == "darwin" else peak * 1024


def time_steps(run: RunShape, cfg: ModelConfig, steps: int = 3) -> float:
    """Median seconds of a real training step (forward, backward, optimizer) of a model of ``cfg`` (the run's
    model, or fewer of its blocks) on the run's micro-batch, device and precision."""
    device = run.device
    generator = torch.Generator().manual_seed(0)  # the global generator is the run's, not the probe's
    model = build_model(cfg).to(device).train()
    if run.checkpointing:
        # As trainer=fsdp runs its blocks: each forward again in the backward pass, part of the step's time.
        for block in model.trf_blocks:
            recompute_in_backward(block)
    optimizer = run.optimizer_factory(model)  # given the model, as training gives it (decay rules, Muon's split)
    tokens = torch.randint(0, cfg.vocab_size, (run.micro_batch, cfg.context_length + 1), generator=generator).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    autocast = torch.autocast(device.type, dtype=run.autocast_dtype) if run.autocast_dtype else nullcontext()
    times = []
    for i in range(steps + 1):  # the first step pays for allocation and kernel selection
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class StepProbe:
    """Seconds of a real micro-batch step: of the whole model when it fits the device, else extrapolated from
    one and two transformer blocks (``per_block`` each, ``rest`` for the embeddings, head, loss and optimizer)."""

    rest: float
    per_block: float
    whole: float | None = None
    # Set when the one- and two-block times differed by less than a block's matmuls take at the measured rate
    # (the machine's load changed between them): that difference. per_block is then the matmuls' time.
    noise: float | None = None

    def step_seconds(self, n_layers: int) -> float:
        return self.whole if self.whole is not None else self.rest + n_layers * self.per_block

    def describe(self) -> str:
        if self.whole is not None:
            return f"3 real steps of the whole model: {self.whole * 1e3:.1f} ms per micro-batch step"
        rest = f"the rest (embeddings, head, loss, AdamW) {self.rest * 1e3:.1f} ms"
        if self.noise is not None:
            return (f"the model does not fit, so one and two blocks were timed, {self.noise * 1e3:.1f} ms apart: less "
                    "than a block's matmuls take at the measured rate (this machine's load changed between them), so a "
                    f"block counts as its matmuls, {self.per_block * 1e3:.1f} ms; {rest}")
        return (f"the model does not fit, so one and two blocks were timed: a block adds {self.per_block * 1e3:.1f} ms "
                f"to a micro-batch step, {rest}")


def available_memory(device: torch.device) -> int:
    """Bytes a run could still allocate on ``device``."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return system_available_memory()  # a CPU's, or an Apple GPU's, which shares the system's memory


def system_available_memory() -> int:
    """Bytes of RAM a new allocation could take; 0 where unknown. Linux's MemAvailable counts the caches the
    kernel would reclaim; elsewhere (macOS, Windows: no /proc) psutil's estimate when it is installed, else the
    free pages that sysconf reports where it has them (fewer than could be reclaimed, so a cautious plan)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or not that name (macOS)
        return 0


def probe_step(run: RunShape, fits: bool, matmul_flops: float) -> StepProbe:
    """Time the run's step (see StepProbe); ``matmul_flops``, the rate the device runs the step's matmuls at,
    bounds a block's time from below."""
    if fits:
        return StepProbe(rest=0.0, per_block=0.0, whole=time_steps(run, run.config))
    cfg, seq_len = run.config, run.config.context_length
    one, two = (time_steps(run, replace(cfg, n_layers=n), steps=5) for n in (1, 2))
    # On a shared machine a load that comes or goes between the two timings can swallow a block's share, which
    # made a block cost 0 ms and gpt1558m's plan an MFU of 10 (every block's FLOPs in the rest's time).
    block_flops = training_flops_per_token(replace(cfg, n_layers=2), seq_len) - training_flops_per_token(
        replace(cfg, n_layers=1), seq_len)
    least = block_flops * run.micro_batch * seq_len / matmul_flops
    if two - one >= least:
        return StepProbe(rest=max(one - (two - one), 0.0), per_block=two - one)
    return StepProbe(rest=max(one - least, 0.0), per_block=least, noise=two - one)


@dataclass
class RunPlan:
    config: ModelConfig
    parameters: int
    micro_batch: int
    seq_len: int
    devices: int
    accumulation: int
    device: str
    precision: str
    memory: MemoryPlan
    flops_per_token: float
    matmul_flops: float
    probe: StepProbe
    steps: int | None  # optimizer steps of the whole run, when known
    steps_per_epoch: int | None
    budget: str  # what ends the run, in words
    largest_micro_batch: int | None = None  # GPUs only
    evaluations: int | None = None  # how many evaluations the run makes, when known
    eval_batches: int = 0  # micro-batches of both splits per evaluation, each rank's share
    available: int = 0  # bytes the device had free when planned (0: unknown)
    muon: bool = False  # optimizer=muon
    shards: int = 1  # ranks the weights are sharded across (1: none)
    checkpointing: bool = False  # the blocks' activations recomputed in the backward pass
    local_processes: int = 1  # the run's processes on this machine, when they share its memory (a CPU's)
    shards_to_fit: int | None = None  # the fewest ranks a sharded run would need to fit; None: none would, or unknown

    @property
    def needed(self) -> int:
        """Bytes of what the device has free now that the run needs: this process is already in use."""
        return self.local_processes * self.memory.peak - self.memory.baseline

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.seq_len * self.devices * self.accumulation

    @property
    def step_seconds(self) -> float:
        return self.accumulation * self.probe.step_seconds(self.config.n_layers)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.step_seconds

    @property
    def eval_seconds(self) -> float:
        """An evaluation's forward passes, each costing about a third of a training micro-batch step (the
        backward pass does twice the forward's matmuls; no optimizer step)."""
        return (self.evaluations or 0) * self.eval_batches * self.probe.step_seconds(self.config.n_layers) / 3

    @property
    def mfu(self) -> float:
        return self.tokens_per_second / self.devices * self.flops_per_token / self.matmul_flops


@dataclass
class RunShape:
    """What the config says of a run, as plan_run needs it: the model, its batch and devices, its length."""

    config: ModelConfig
    micro_batch: int
    devices: int
    accumulation: int
    device: torch.device
    precision: str
    autocast_dtype: torch.dtype | None  # the mixed-precision dtype, None in fp32
    optimizer_factory: Callable
    steps: int | None  # optimizer steps of the whole run, when known
    steps_per_epoch: int | None
    budget: str  # what ends the run, in words
    baseline: int  # the process's own memory before the run allocates anything
    evaluations: int | None = None
    eval_batches: int = 0
    muon: bool = False  # optimizer=muon: Muon's one buffer per matrix element instead of AdamW's two moments
    shards: int = 1  # trainer=fsdp: ranks holding a shard each of the weights, gradients and optimizer state
    checkpointing: bool = False  # trainer=fsdp's activation_checkpointing
    local_processes: int = 1  # a CPU run's processes on one machine, which share its memory


def plan_run(run: RunShape) -> RunPlan:
    """Measure the device (matmul rate, a short probe of the real step) and predict the run's memory and time."""
    cfg, micro_batch, device, autocast_dtype = run.config, run.micro_batch, run.device, run.autocast_dtype
    seq_len = cfg.context_length
    matmul_dtype = autocast_dtype or torch.float32
    largest = None
    if device.type == "cuda":
        largest = largest_micro_batch(cfg, seq_len, "cuda", torch.cuda.get_device_properties(device).total_memory,
                                      run.shards, run.checkpointing)
    memory = plan_memory(cfg, micro_batch, seq_len, device.type, run.baseline if device.type == "cpu" else 0,
                         run.muon, run.shards, run.checkpointing)
    available = available_memory(device)
    # The probe trains the whole model, unsharded, in this one process, whatever the run shards.
    whole = plan_memory(cfg, micro_batch, seq_len, device.type, memory.baseline, run.muon,
                        checkpointing=run.checkpointing)
    fits = whole.peak - whole.baseline < 0.8 * available
    matmul_flops = step_peak_flops(cfg, micro_batch * seq_len, device, matmul_dtype)
    # What sharding would take: with the run's own checkpointing, or trainer=fsdp's default (on) for a run
    # not sharded yet.
    shards_to_fit = None
    if available and not run.muon:
        shards_to_fit = fewest_shards(cfg, micro_batch, seq_len, device.type, available, memory.baseline,
                                      run.checkpointing or run.shards == 1)
    return RunPlan(
        config=cfg,
        parameters=parameter_count(cfg),
        micro_batch=micro_batch,
        seq_len=seq_len,
        devices=run.devices,
        accumulation=run.accumulation,
        device=str(device),
        precision=run.precision,
        memory=memory,
        flops_per_token=training_flops_per_token(cfg, seq_len),
        matmul_flops=matmul_flops,
        probe=probe_step(run, fits, matmul_flops),
        steps=run.steps,
        steps_per_epoch=run.steps_per_epoch,
        budget=run.budget,
        largest_micro_batch=largest,
        evaluations=run.evaluations,
        eval_batches=run.eval_batches,
        available=available,
        muon=run.muon,
        shards=run.shards,
        checkpointing=run.checkpointing,
        local_processes=run.local_processes,
        shards_to_fit=shards_to_fit,
    )


def human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def describe(plan: RunPlan) -> str:
    cfg, mem = plan.config, plan.memory
    family, heads = "", f"{cfg.n_heads} heads"
    if cfg.family != "gpt2":
        family = {"llama3": "Llama 3, ", "qwen3": "Qwen3, "}[cfg.family]
        heads = f"{cfg.n_heads} heads sharing {cfg.n_kv_groups} key/value heads"
    lines = [
        f"model        {plan.parameters:,} parameters ({family}emb_dim {cfg.emb_dim}, {cfg.n_layers} layers, {heads}, "
        f"vocab {cfg.vocab_size}), context {plan.seq_len}",
        f"batch        micro-batch {plan.micro_batch} x {plan.devices} device(s) x {plan.accumulation} accumulation = "
        f"{plan.tokens_per_step:,} tokens per optimizer step",
        f"FLOPs        {plan.flops_per_token / 1e9:.3f} GFLOP per token (training), "
        f"{plan.flops_per_token * plan.tokens_per_step / 1e12:.3f} TFLOP per step",
        f"memory       per device, {plan.precision}"
        + (f", sharded {plan.shards} ways (trainer=fsdp):" if plan.shards > 1 else ":"),
        f"  weights      {human_bytes(mem.weights):>10}",
        f"  gradients    {human_bytes(mem.gradients):>10}",
        f"  {'optimizer' if plan.muon else 'AdamW state':<11}  {human_bytes(mem.optimizer):>10}"
        + ("  (Muon's momentum for the blocks' matrices, AdamW's moments for the rest)" if plan.muon else ""),
    ]
    if mem.gathered:
        blocks = "a block" if cfg.n_layers == 1 else "two blocks"
        lines.append(f"  gathered     {human_bytes(mem.gathered):>10}  (the full weights of {blocks} and of the "
                     "embeddings and head, while they run)")
    lines.append(f"  activations  {human_bytes(mem.activations):>10}  (one micro-batch of {plan.micro_batch}"
                 + ("; the blocks recomputed in the backward pass)" if plan.checkpointing else ")"))
    if mem.baseline:
        lines.append(f"  process      {human_bytes(mem.baseline):>10}  (Python, torch, Lightning, tokenizer: measured)")
    lines.append(f"  peak         {human_bytes(mem.peak):>10}  predicted")
    if plan.local_processes > 1:
        lines.append(f"  machine      {human_bytes(plan.local_processes * mem.peak):>10}  predicted for the "
                     f"{plan.local_processes} processes on this machine, which share its memory")
    if plan.available and plan.needed > plan.available:
        lines.append(f"  DOES NOT FIT: {plan.device} has {human_bytes(plan.available)} free; {fit_advice(plan)}")
    elif plan.available:
        lines.append(f"  fits         {human_bytes(plan.available):>10}  free on {plan.device} now")
    if plan.largest_micro_batch is not None:
        lines.append(f"  largest micro-batch that fits this GPU: {plan.largest_micro_batch}")
    lines += [
        f"device       {plan.device}: the step's matmuls run at {plan.matmul_flops / 1e9:.1f} GFLOP/s (measured now)",
        f"probe        {plan.probe.describe()}",
        f"predicted    {human_seconds(plan.step_seconds)} per optimizer step, {plan.tokens_per_second:,.0f} tokens/s, "
        f"MFU {plan.mfu:.2f}",
    ]
    if plan.steps_per_epoch:
        lines.append(f"  epoch        {plan.steps_per_epoch} steps, {human_seconds(plan.steps_per_epoch * plan.step_seconds)}")
    if plan.steps:
        training = plan.steps * plan.step_seconds
        lines.append(f"  whole run    {plan.steps} steps ({plan.budget}), {human_seconds(training)}")
        if plan.evaluations:
            lines += [
                f"  evaluation   {plan.evaluations} x {plan.eval_batches} batches, {human_seconds(plan.eval_seconds)} "
                "(forward passes: a third of a step each)",
                f"  total        {human_seconds(training + plan.eval_seconds)}, besides start-up, samples and "
                "checkpoint writes",
            ]
    return "\n".join(lines)


def fit_advice(plan: RunPlan) -> str:
    """What would make a run fit that does not, by what fills the memory: the model's states sharded with
    trainer=fsdp (across more ranks, if it is already), or a smaller micro-batch or model."""
    lower = ("lower data.batch_size or data.context_length (trainer.tokens_per_step keeps the batch by accumulating) "
             "or choose a smaller model=")
    shards = plan.shards_to_fit
    if shards is None or not plan.device.startswith(("cpu", "cuda")):  # no FSDP on Apple GPUs
        return lower
    if plan.device == "cpu":
        # A CPU's ranks are processes sharing its memory: only more machines add memory.
        where = (f"{shards} machines (trainer.num_nodes={shards}, trainer.devices=1: a machine's processes share its "
                 "memory)")
    else:
        where = f"{shards} devices (trainer.devices x trainer.num_nodes)"
    if plan.shards > 1:
        return f"shard across {where}, or {lower}"
    mem = plan.memory
    states = mem.weights + mem.gradients + mem.optimizer
    if plan.local_processes * states > plan.available:
        return (f"the weights, gradients and AdamW state alone take {human_bytes(states)}: shard them with "
                f"trainer=fsdp across {where}, or choose a smaller model=")
    return f"{lower}, or shard the model with trainer=fsdp across {where}"


def evaluation_count(steps: int | None, val_check_interval, eval_freq: int | None = None) -> int | None:
    """Evaluations of a run of ``steps`` optimizer steps: every ``val_check_interval`` steps, or on the book's
    schedule (after steps 1, 1 + eval_freq, ...) when ``eval_freq`` is set. None when the interval is a fraction
    of an epoch or the run's length is unknown."""
    if not steps:
        return None
    if eval_freq:
        return math.ceil(steps / eval_freq)
    if isinstance(val_check_interval, int) and not isinstance(val_check_interval, bool) and val_check_interval > 0:
        return steps // val_check_interval
    return None


def batches_per_evaluation(limit, batches: int) -> int:
    """How many of a split's ``batches`` an evaluation reads under ``trainer.limit_val_batches``."""
    if isinstance(limit, float):
        return math.ceil(limit * batches) if limit < 1.0 else batches
    return min(int(limit), batches)


def steps_for(max_steps: int, max_epochs: int | None, steps_per_epoch: int | None, max_tokens: int | None,
              tokens_per_step: int) -> tuple[int | None, str]:
    """The optimizer steps of the whole run and what ends it: whichever limit comes first, as Lightning stops."""
    limits = []
    if max_steps and max_steps > 0:
        limits.append((max_steps, f"trainer.max_steps={max_steps}"))
    if max_epochs and max_epochs > 0 and steps_per_epoch:
        limits.append((max_epochs * steps_per_epoch, f"{max_epochs} epochs"))
    if max_tokens:
        limits.append((math.ceil(max_tokens / tokens_per_step), f"a budget of {max_tokens:,} tokens"))
    return min(limits) if limits else (None, "no limit set")
