"""Continuous batching: every request being decoded advances by one token per step, in one batched forward.

One thread runs the model. Each step it
1. drops the requests that were cancelled (a client went away, a stop string was seen) or have finished,
   so their slots are free at once;
2. admits waiting requests into free slots: the prompts that arrived since the last step are prefilled
   together, in one left-padded forward (one alone is prefilled exactly as generate.py runs it; see
   slot_cache), which also picks each one's first token;
3. runs one forward over all active requests, one new token per row, and picks each row's next token with
   that request's own settings and random generator. The output head's product is the server's own
   (output_head): measured at start, in the layout this machine runs fastest for a batch.

Requests beyond the free slots wait in a queue of bounded length; beyond that ``submit`` raises ``QueueFull``
(the server answers 429) instead of holding more and more memory.

Token picking reuses gptlit.core.generation's ``next_token`` row by row, with a generator seeded from the
request's seed: a request alone computes exactly what generate.py computes (same cache layout, same kernels,
same draws from torch's generator for the same seed). Beside other requests its rows go through batched
matrix products, whose rounding differs in the last bits (about 1e-6 in the logits), which leaves the greedy
tokens the same unless two candidates tie within that.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from gptlit.core.generation import DecodingConfig, next_token
from gptlit.core.model import GPTModel
from gptlit.serving.output_head import OutputHead
from gptlit.serving.slot_cache import SlotCache

log = logging.getLogger(__name__)

# What a request's listener receives, from the engine's thread: ("token", id) for each new token, then
# ("done", finish_reason) once, with "stop" (eos), "length" (max_tokens or a full slot), "cancelled" or "error".
Listener = Callable[[str, object], None]


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is at its limit."""


@dataclass
class Sampling:
    """A request's decoding settings; temperature 0 is greedy."""

    max_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass(eq=False)
class Request:
    prompt: list[int]
    sampling: Sampling
    listener: Listener
    id: int = 0
    generated: int = 0
    last_token: int | None = None
    cancelled: bool = False
    finish_reason: str | None = None
    decoding: DecodingConfig | None = None
    generator: torch.Generator | None = None
    slot: int | None = field(default=None, repr=False)


@dataclass
class EngineStats:
    finished: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    tokens: int = 0
    largest_batch: int = 0  # the most rows one decoding step has run
    largest_prefill: int = 0  # the most prompts one prefill has run together


class Engine:
    def __init__(self, model: GPTModel, max_batch: int = 8, max_queue: int = 32, eos_id: int | None = None,
                 head_block: int | None | str = "measure"):
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.model = model.eval()
        self.device = model.out_head.weight.device
        self.context_length = model.cfg.context_length
        self.vocab_size = model.cfg.vocab_size
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.eos_id = eos_id
        # The tokenizer's ids: a vocabulary rounded up for speed has padding ids that are never picked.
        self.vocab = model.cfg.vocab_used or model.cfg.vocab_size
        self.cache = SlotCache(model, max_batch)
        self.head = OutputHead(model.out_head.weight, self.vocab, rows=max_batch, block=head_block)
        self.rows: list[Request] = []  # rows[i] decodes in slot i
        self.waiting: deque[Request] = deque()
        self.stats = EngineStats()
        self._ids = itertools.count(1)
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # Called from any thread ------------------------------------------------------------------------------

    def submit(self, prompt: list[int], sampling: Sampling, listener: Listener) -> Request:
        """Queue a request; its tokens reach ``listener`` from the engine's thread."""
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) + sampling.max_tokens > self.context_length:
            raise ValueError(f"{len(prompt)} prompt tokens + {sampling.max_tokens} new ones exceed the context "
                             f"({self.context_length})")
        request = Request(list(prompt), sampling, listener)
        with self._wake:
            # A free slot takes a request at the next step; past those, max_queue may wait.
            if len(self.waiting) >= self.max_queue + self.max_batch - len(self.rows):
                raise QueueFull(f"{len(self.rows)} requests are being decoded and {len(self.waiting)} are waiting")
            request.id = next(self._ids)
            self.waiting.append(request)
            self._wake.notify()
        return request

    def cancel(self, request: Request) -> None:
        """Stop decoding ``request``: its slot is freed before the next step. Harmless once it has finished."""
        with self._wake:
            request.cancelled = True
            if request in self.waiting:
                self.waiting.remove(request)
                self._finish(request, "cancelled")
            self._wake.notify()

    def cancel_all(self) -> None:
        """End every request now (the server is shutting down): each gets ("done", "cancelled"), so open streams
        close properly instead of waiting to be killed."""
        with self._wake:
            for request in [*self.rows, *self.waiting]:
                request.cancelled = True
                self._finish(request, "cancelled")
            self.waiting.clear()
            self._wake.notify()

    def load(self) -> dict[str, int]:
        with self._wake:
            return {"active": len(self.rows), "waiting": len(self.waiting), "slots": self.max_batch,
                    "max_queue": self.max_queue}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gptlit-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for request in [*self.rows, *self.waiting]:
            self._finish(request, "cancelled")
        self.rows.clear()
        self.waiting.clear()

    # The engine's thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        # Inference only: no autograd records, and torch's thread pool is this thread's alone.
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stopping and not self.rows and not self.waiting:
                        self._wake.wait()
                    if self._stopping:
                        return
                try:
                    self.step()
                except Exception:  # a bug must not leave clients waiting forever: fail the requests, keep serving
                    log.exception("decoding step failed; its requests end with an error")
                    for request in list(self.rows):
                        self._finish(request, "error")
                    self.rows.clear()

    def step(self) -> None:
        """One round: free, admit (prefill), decode."""
        self._drop_finished()
        self._admit()
        self._drop_finished()
        if self.rows:
            self._decode()

    def _drop_finished(self) -> None:
        with self._wake:
            for slot in range(len(self.rows) - 1, -1, -1):
                request = self.rows[slot]
                if request.cancelled or request.finish_reason is not None:
                    self._finish(request, "cancelled")
                    self._remove(slot)

    def _remove(self, slot: int) -> None:
        # Keep active requests in slots 0..n-1, so a decode pass reads a view of the cache: the last one moves
        # into the hole (its keys and values copied once).
        last = len(self.rows) - 1
        if slot != last:
            self.cache.move(last, slot)
            self.rows[slot] = self.rows[last]
            self.rows[slot].slot = slot
        else:
            self.cache.release(slot)
        self.rows.pop()

    def _admit(self) -> None:
        with self._wake:
            admitted = []
            while self.waiting and len(self.rows) < self.max_batch:
                request = self.waiting.popleft()
                request.slot = len(self.rows)
                self.rows.append(request)
                admitted.append(request)
        if not admitted:
            return
        for request in admitted:
            self._prepare(request)
        if len(admitted) == 1:
            # Alone, exactly as generate.py runs a prompt (see slot_cache).
            request = admitted[0]
            idx = torch.tensor([request.prompt], dtype=torch.long, device=self.device)
            features = self.model.features(idx, cache=self.cache.prefill(request.slot))
        else:
            width = max(len(r.prompt) for r in admitted)
            starts = [width - len(r.prompt) for r in admitted]
            # Left padding with token 0: padding positions are masked out of every real token's attention.
            idx = torch.tensor([[0] * start + r.prompt for start, r in zip(starts, admitted)], dtype=torch.long,
                               device=self.device)
            features = self.model.features(idx, cache=self.cache.prefill_padded(admitted[0].slot, starts))
        self.stats.largest_prefill = max(self.stats.largest_prefill, len(admitted))
        logits = self.head(features[:, -1])
        for row, request in enumerate(admitted):
            self._take(request, int(next_token(logits[row : row + 1], request.decoding, request.generator)[0, 0]))

    def _prepare(self, request: Request) -> None:
        s = request.sampling
        # OpenAI's API takes top_k/top_p beside temperature 0 and decodes greedily: the filters are dropped here,
        # where generate.py refuses them (a command line that would silently not do what it says).
        greedy = s.temperature == 0
        request.decoding = DecodingConfig(temperature=s.temperature, top_k=None if greedy else s.top_k,
                                          top_p=None if greedy else s.top_p, eos_id=self.eos_id)
        if s.temperature > 0:
            seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            # A generator of its own, seeded as generate.py seeds torch's global one: the same draws.
            request.generator = torch.Generator(device=self.device)
            request.generator.manual_seed(seed)

    def _decode(self) -> None:
        n = len(self.rows)
        idx = torch.tensor([[r.last_token] for r in self.rows], dtype=torch.long, device=self.device)
        logits = self.head(self.model.features(idx, cache=self.cache.decode(n))[:, -1])
        greedy = [i for i, r in enumerate(self.rows) if r.sampling.temperature == 0]
        picked: list[int | None] = [None] * n
        if greedy:
            # argmax is exact, so a greedy row picks what it would pick alone from the same logits.
            for i, token in zip(greedy, logits[greedy].argmax(dim=-1).tolist()):
                picked[i] = token
        for i, request in enumerate(self.rows):
            if picked[i] is None:
                picked[i] = int(next_token(logits[i : i + 1], request.decoding, request.generator)[0, 0])
        self.stats.steps += 1
        self.stats.largest_batch = max(self.stats.largest_batch, n)
        for request, token in zip(self.rows, picked):
            if not request.cancelled:
                self._take(request, token)

    def _take(self, request: Request, token: int) -> None:
        """Hand a picked token to its request, or end the request (eos, max_tokens, a full slot)."""
        if self.eos_id is not None and token == self.eos_id:
            self._finish(request, "stop")  # eos ends the text and is not part of it, as in generate.py
            return
        request.generated += 1
        request.last_token = token
        self.stats.tokens += 1
        self._emit(request, "token", token)
        # The token goes into the cache at the next step, at position lengths[slot]: there must be room for it.
        full = self.cache.lengths[request.slot] >= self.cache.capacity
        if request.generated >= request.sampling.max_tokens or full:
            self._finish(request, "length")

    def _finish(self, request: Request, reason: str) -> None:
        if request.finish_reason is not None:
            return
        # A cancelled request that had already finished keeps its reason (the branch above).
        request.finish_reason = reason
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        self._emit(request, "done", reason)

    def _emit(self, request: Request, kind: str, value: object) -> None:
        try:
            request.listener(kind, value)
        except Exception:  # a listener whose client has gone away must not stop the others
            log.debug("listener of request %d failed", request.id, exc_info=True)
            request.cancelled = True
