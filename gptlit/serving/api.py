"""The HTTP API: OpenAI's /v1/models, /v1/completions and /v1/chat/completions, /health, and the chat page.

Handlers run on the event loop and never touch the model: each request goes to the engine (engine.py), whose
thread sends its tokens back through ``loop.call_soon_threadsafe`` into an asyncio queue; the handler turns
them into text (stops.py) and into OpenAI's JSON, or into server-sent events when ``stream`` is true.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import AsyncIterator


from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from gptlit.core.tokenizer import Tokenizer
from gptlit.serving.engine import Engine, QueueFull, Sampling
from gptlit.serving.errors import APIError, error_body, error_response, install_handlers
from gptlit.serving.schemas import ChatRequest, CompletionRequest, Sampled
from gptlit.serving.settings import ServeSettings
from gptlit.serving.stops import TextStream

# A body larger than this is refused (413) before it is read: the character limits bound what a request may
# hold, and JSON's escapes at most sextuple it.
MAX_BODY_BYTES = 1 << 20


@dataclass
class Job:
    """A request made ready for the engine."""

    prompt: list[int]
    sampling: Sampling
    stops: list[str]
    warning: str | None = None


class _Guard:
    """Pure ASGI middleware: the API key and the body size are checked before FastAPI reads a byte of the body,
    so a malformed request without the key is still a 401, and a huge one never reaches memory."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            problem = None
            if self.api_key is not None and scope["path"].startswith("/v1/"):
                given = headers.get(b"authorization", b"").decode("latin-1")
                token = given[7:] if given.lower().startswith("bearer ") else None
                if token is None:
                    problem = error_response(401, "this server needs an API key: send the header "
                                                  "'Authorization: Bearer KEY'", None, "invalid_api_key")
                elif not secrets.compare_digest(token.encode(), self.api_key.encode()):
                    problem = error_response(401, "incorrect API key", None, "invalid_api_key")
            length = headers.get(b"content-length", b"0")
            if problem is None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                problem = error_response(413, f"the request body exceeds {MAX_BODY_BYTES} bytes")
            if problem is not None:
                await problem(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Run:
    """One request's way through the engine, seen from the event loop."""

    def __init__(self, engine: Engine, job: Job, tokenizer: Tokenizer, strip_leading: bool):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

        def listener(kind: str, value: object) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

        self.engine = engine
        self.text = TextStream(tokenizer, job.stops)
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        # Chat replies start after "Assistant:", so their first token brings a space nobody wants to see.
        self.strip_leading = strip_leading
        try:
            self.handle = engine.submit(job.prompt, job.sampling, listener)
        except QueueFull as err:
            raise APIError(429, f"the server is busy ({err}); retry in a moment", None, "rate_limit_exceeded")

    async def pieces(self) -> AsyncIterator[str]:
        """The reply's text as it comes; ``finish_reason`` is set when it ends. Leaving early (a client that
        went away, a cancelled task) frees the request's slot."""
        try:
            while self.finish_reason is None:
                kind, value = await self.queue.get()
                if kind == "token":
                    self.token_ids.append(value)
                    piece = self.text.feed(value)
                    if self.text.stopped:
                        self.finish_reason = "stop"
                        self.engine.cancel(self.handle)
                else:
                    piece, self.finish_reason = self.text.close(), value
                if self.strip_leading:
                    piece = piece.lstrip()
                    self.strip_leading = not piece
                if piece:
                    yield piece
        finally:
            self.engine.cancel(self.handle)

    @property
    def completion_tokens(self) -> int:
        return min(len(self.token_ids), self.text.tokens) if self.text.stopped else len(self.token_ids)

    def generated_ids(self) -> list[int]:
        return self.token_ids[: self.completion_tokens]


def create_app(engine: Engine, tokenizer: Tokenizer, settings: ServeSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="gptlit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    install_handlers(app)
    app.state.engine = engine
    app.add_middleware(_Guard, api_key=settings.api_key)
    started = int(time.time())
    context = engine.context_length
    page = resources.files("gptlit.serving").joinpath("static/chat.html").read_text(encoding="utf-8")

    def model_card() -> dict:
        return {"id": settings.model_name, "object": "model", "created": started, "owned_by": "gptlit",
                "context_length": context}

    @app.get("/", include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_name, "context_length": context, **engine.load(),
                "finished": dict(engine.stats.finished), "tokens": engine.stats.tokens,
                "largest_batch": engine.stats.largest_batch}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict:
        check_model(model)
        return model_card()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_common(body)
        job = make_job(body, completion_prompt(body), body.stop_list())
        run = _Run(engine, job, tokenizer, strip_leading=False)
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, finish: str | None) -> dict:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return {"id": ident, "object": "text_completion", "created": created, "model": settings.model_name,
                    "choices": [choice]}

        if body.stream:
            return sse(run, job, body, lambda piece: chunk(piece, None), lambda: chunk("", run.finish_reason),
                       lambda: chunk("", None))
        text = await collect(run, request)
        out = chunk(text, run.finish_reason)
        return finish_body(out, run, job, body)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        if body.max_completion_tokens is not None:
            body.max_tokens = body.max_completion_tokens
        check_common(body)
        check_messages(body)
        messages = [("system" if m.role == "developer" else m.role, m.text()) for m in body.messages]
        # Chat text is text: "<|endoftext|>" typed by a user stays characters, never the special token.
        start = [] if tokenizer.bos_id is None else [tokenizer.bos_id]  # Llama 3's <|begin_of_text|>; GPT-2 has none
        prompt = start + tokenizer.encode_ordinary(settings.chat.render(messages))
        job = make_job(body, prompt, [*settings.chat.stop, *body.stop_list()])
        run = _Run(engine, job, tokenizer, strip_leading=True)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish: str | None) -> dict:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": settings.model_name, "choices": [choice]}

        if body.stream:
            return sse(run, job, body, lambda piece: chunk({"content": piece}, None),
                       lambda: chunk({}, run.finish_reason), lambda: chunk({"role": "assistant", "content": ""}, None))
        text = await collect(run, request)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": run.finish_reason}
        out = {"id": ident, "object": "chat.completion", "created": created, "model": settings.model_name,
               "choices": [choice]}
        return finish_body(out, run, job, body)

    # Checks ----------------------------------------------------------------------------------------------

    def check_model(name: str) -> None:
        if name != settings.model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{settings.model_name}' "
                                "(GET /v1/models)", "model", "model_not_found")

    def check_common(body: Sampled) -> None:
        check_model(body.model)
        field = body.unsupported()
        if field is not None:
            raise APIError(400, f"{field} is not supported by this server; leave it at its default", field,
                           "unsupported_parameter")
        stops = body.stop_list()
        limits = settings.limits
        if len(stops) > limits.max_stop or any(len(s) > limits.max_stop_chars for s in stops):
            raise APIError(400, f"stop takes at most {limits.max_stop} strings of at most {limits.max_stop_chars} "
                                "characters each", "stop", "invalid_value")
        if body.max_tokens is not None and body.max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens must be at most {limits.max_tokens}, got {body.max_tokens}",
                           "max_tokens", "invalid_value")

    def check_messages(body: ChatRequest) -> None:
        limits = settings.limits
        if len(body.messages) > limits.max_messages:
            raise APIError(400, f"at most {limits.max_messages} messages per request, got {len(body.messages)}",
                           "messages", "invalid_value")
        lengths = [len(m.text()) for m in body.messages]
        for i, n in enumerate(lengths):
            if n > limits.max_message_chars:
                raise APIError(400, f"message {i} has {n} characters; at most {limits.max_message_chars} are "
                                    "allowed", f"messages.{i}.content", "invalid_value")
        if sum(lengths) > limits.max_total_chars:
            raise APIError(400, f"the conversation has {sum(lengths)} characters; at most "
                                f"{limits.max_total_chars} are allowed", "messages", "invalid_value")

    def completion_prompt(body: CompletionRequest) -> list[int]:
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise APIError(400, "one prompt per request: pass a string (or a list holding one string)",
                               "prompt", "invalid_value")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if len(prompt) > settings.limits.max_total_chars:
                raise APIError(400, f"the prompt has {len(prompt)} characters; at most "
                                    f"{settings.limits.max_total_chars} are allowed", "prompt", "invalid_value")
            # As generate.py encodes it, so both see the same tokens ("<|endoftext|>" included, and the start
            # token of a tokenizer that has one: Llama 3's <|begin_of_text|>).
            ids = tokenizer.encode_prompt(prompt)
        else:
            ids = list(prompt)
            if any(not 0 <= t < engine.vocab_size for t in ids):
                raise APIError(400, f"token ids must be in [0, {engine.vocab_size})", "prompt", "invalid_value")
        if not ids:
            raise APIError(400, "the prompt is empty", "prompt", "invalid_value")
        return ids

    def make_job(body: Sampled, prompt: list[int], stops: list[str]) -> Job:
        prompt, max_tokens, warning = fit_context(prompt, body.max_tokens)
        temperature = settings.default_temperature if body.temperature is None else body.temperature
        sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_k=body.top_k or None,
                            top_p=body.top_p, seed=body.seed)
        return Job(prompt, sampling, stops, warning)

    def fit_context(prompt: list[int], requested: int | None) -> tuple[list[int], int, str | None]:
        """The prompt and max_tokens that fit the context, refusing or truncating (setting long_prompt)."""
        n = len(prompt)
        if requested is not None and requested >= context:
            raise APIError(400, f"max_tokens ({requested}) must leave room for the prompt in this model's context "
                                f"of {context} tokens", "max_tokens", "invalid_value")
        if requested is not None:
            wanted = requested
        elif n < context:
            wanted = min(settings.default_max_tokens, context - n)
        else:  # the prompt fills the context by itself: the default reply, if the prompt may be cut
            wanted = min(settings.default_max_tokens, context - 1)
        if n + wanted <= context:
            return prompt, wanted, None
        if settings.long_prompt == "refuse":
            raise APIError(400, f"this model's maximum context length is {context} tokens; however, you requested "
                                f"{n + wanted} tokens ({n} in the prompt, {wanted} in the completion); shorten the "
                                "prompt or lower max_tokens", None, "context_length_exceeded")
        kept = context - wanted
        warning = (f"the prompt had {n} tokens and the context holds {context}, {wanted} of them for the "
                   f"completion: its first {n - kept} tokens were dropped")
        return prompt[n - kept :], wanted, warning

    # Replies ---------------------------------------------------------------------------------------------

    def usage(run: _Run, job: Job) -> dict:
        n = len(job.prompt)
        return {"prompt_tokens": n, "completion_tokens": run.completion_tokens,
                "total_tokens": n + run.completion_tokens}

    def finish_body(out: dict, run: _Run, job: Job, body: Sampled) -> JSONResponse:
        if run.finish_reason in ("cancelled", "error"):
            raise APIError(503, f"the server stopped decoding this request ({run.finish_reason}); retry")
        out["usage"] = usage(run, job)
        if body.return_token_ids:
            out["choices"][0]["token_ids"] = run.generated_ids()
            out["prompt_token_ids"] = job.prompt
        if job.warning:
            out["warning"] = job.warning
        return JSONResponse(out)

    async def collect(run: _Run, request: Request) -> str:
        """The whole reply; a client that leaves before it is done frees its slot (Starlette does not cancel
        a plain handler when its client disconnects, so the handler looks)."""
        parts: list[str] = []

        async def read() -> None:
            async for piece in run.pieces():
                parts.append(piece)

        task = asyncio.ensure_future(read())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    break
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            task.cancel()
            engine.cancel(run.handle)
        return "".join(parts)

    def sse(run: _Run, job: Job, body: Sampled, piece_chunk, last_chunk, first_chunk) -> StreamingResponse:
        include_usage = body.stream_options is not None and body.stream_options.include_usage

        def event(obj: dict) -> str:
            if include_usage:
                obj["usage"] = None
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            # On a disconnect Starlette cancels this generator where it waits; run.pieces() then frees the slot.
            first = first_chunk()
            if job.warning:
                first["warning"] = job.warning
            yield event(first)
            async for piece in run.pieces():
                yield event(piece_chunk(piece))
            if run.finish_reason in ("cancelled", "error"):
                yield f"data: {json.dumps(error_body(503, f'decoding stopped ({run.finish_reason}); retry'))}\n\n"
            else:
                last = last_chunk()
                if body.return_token_ids:
                    last["choices"][0]["token_ids"] = run.generated_ids()
                yield event(last)
                if include_usage:
                    tail = last_chunk()
                    tail["choices"] = []
                    yield f"data: {json.dumps({**tail, 'usage': usage(run, job)})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
