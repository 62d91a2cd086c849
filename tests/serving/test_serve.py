"""serve.py end to end: a subprocess serving a tiny model the test writes, spoken to with the official openai
client, and with raw HTTP for what a client library would not send."""

from __future__ import annotations

import json
import threading


import httpx
import openai
import pytest
import torch

from gptlit.core.generation import DecodingConfig, generate
from gptlit.core.tokenizer import ENDOFTEXT_ID, encode, load_tokenizer
from gptlit.serving.chat_template import ChatTemplate
from gptlit.serving.stops import TextStream
from gptlit.weights.io import save_book_pth, save_safetensors
from tests.conftest import tiny_hf_gpt2
from tests.serving.serving_parts import API_KEY, Server, run_cli, run_engine, save_lightning_ckpt, tiny_model
from tests.test_layout import imported_frameworks

PROMPT = "Every effort moves you"
MODEL = "last.ckpt"
PROMPTS = [PROMPT, "I had always thought Jack Gisburn rather a cheap genius", "The", "Hello, how are you doing today?"]


@pytest.fixture(scope="module")
def one_thread():
    # The server and generate.py run with one torch thread (serving_parts.ENV); the references computed here too.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    model = tiny_model()
    save_lightning_ckpt(model, folder / MODEL)
    return folder, model


@pytest.fixture(scope="module")
def server(weights, tmp_path_factory):
    folder, _ = weights
    # Four slots and one waiting place, so the queue test can fill them; greedy unless a request says otherwise.
    srv = Server(f"ckpt_path={folder / MODEL}", f"api_key={API_KEY}", "max_batch=4", "max_queue=1", "temperature=0",
                 log_dir=tmp_path_factory.mktemp("logs"))
    srv.client.headers["Authorization"] = f"Bearer {API_KEY}"
    yield srv
    srv.stop()
    assert "Traceback" not in srv.output(), srv.output()[-3000:]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def reference_ids(model, prompt: str, n: int, seed: int = 123, **decoding) -> list[int]:
    """What gptlit.core.generation (generate.py's decoding) picks after ``prompt``."""
    torch.manual_seed(seed)
    ids = torch.tensor([encode(prompt)])
    out = generate(model, ids, n, decoding=DecodingConfig(eos_id=ENDOFTEXT_ID, **decoding))
    return out[0, ids.shape[1]:].tolist()


def token_ids(choice) -> list[int]:
    return choice.model_extra["token_ids"]


# The openai client ----------------------------------------------------------------------------------------


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = server.health()
    assert health["status"] == "ok" and health["context_length"] == 1024 and health["slots"] == 4


def test_greedy_completion_equals_generate_py(weights, server, client, one_thread):
    folder, model = weights
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0,
                                    extra_body={"return_token_ids": True})
    choice = out.choices[0]
    assert token_ids(choice) == reference_ids(model, PROMPT, 30)
    assert choice.finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (4, 30, 34)
    cli = run_cli("generate.py", f"ckpt_path={folder / MODEL}", f"prompt={PROMPT}", "max_new_tokens=30",
                  "decoding.eos_id=50256")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == PROMPT + choice.text + "\n"
    # OpenAI's API takes top_p and top_k beside temperature 0 (the chat page sends them): still greedy, no error.
    filtered = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0, top_p=0.5,
                                         extra_body={"top_k": 5, "return_token_ids": True})
    assert token_ids(filtered.choices[0]) == token_ids(choice)


def test_streaming_completion_is_the_same_text_in_pieces(server, client):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=25, temperature=0).choices[0].text
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=25, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == whole and len([p for p in pieces if p]) > 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 25


def test_seeded_sampling_equals_generate_py(weights, server, client, one_thread):
    folder, model = weights
    settings = dict(temperature=1.4, top_k=25, top_p=0.95)
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, seed=7, temperature=1.4, top_p=0.95,
                                    extra_body={"top_k": 25, "return_token_ids": True})
    assert token_ids(out.choices[0]) == reference_ids(model, PROMPT, 20, seed=7, **settings)
    cli = run_cli("generate.py", f"ckpt_path={folder / MODEL}", f"prompt={PROMPT}", "max_new_tokens=20", "seed=7",
                  "decoding=sample", "decoding.top_p=0.95", "decoding.eos_id=50256")
    assert cli.stdout == PROMPT + out.choices[0].text + "\n"
    again = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, seed=7, temperature=1.4, top_p=0.95,
                                      extra_body={"top_k": 25})
    assert again.choices[0].text == out.choices[0].text


def test_chat_streaming_and_not(weights, server, client, one_thread):
    _, model = weights
    messages = [{"role": "user", "content": "Who painted the picture?"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    text = reply.choices[0].message.content
    assert reply.choices[0].message.role == "assistant" and reply.object == "chat.completion"
    # The reply continues the template's transcript (a base model has no chat format of its own).
    prompt = ChatTemplate().render([("user", "Who painted the picture?")])
    assert prompt == "A conversation between a user and an assistant.\nUser: Who painted the picture?\nAssistant:"
    assert reply.usage.prompt_tokens == len(encode(prompt))
    stream = TextStream(load_tokenizer(), ["\nUser:"])
    expected = "".join(stream.feed(t) for t in reference_ids(model, prompt, 20)) + stream.close()
    assert text == expected.lstrip()
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def test_stop_string_ends_the_text_before_it(server, client):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0).choices[0].text
    stop = whole[len(whole) // 2 : len(whole) // 2 + 4]
    cut = whole[: whole.index(stop)]
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop, "zzzz"])
    assert (out.choices[0].text, out.choices[0].finish_reason) == (cut, "stop")
    streamed = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0, stop=stop,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == cut
    assert streamed[-1].choices[0].finish_reason == "stop"


# Continuous batching ---------------------------------------------------------------------------------------


def concurrently(calls):
    results = [None] * len(calls)

    def run(i):
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_batched_greedy_tokens_equal_lone_ones_and_generate(weights, server, client, one_thread):
    _, model = weights

    def ask(prompt, n=40):
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=n, temperature=0,
                                        extra_body={"return_token_ids": True})
        return token_ids(out.choices[0])

    alone = [ask(p) for p in PROMPTS]
    assert alone == [reference_ids(model, p, 40) for p in PROMPTS]
    before = server.health()["largest_batch"]
    together = concurrently([lambda p=p: ask(p) for p in PROMPTS])
    assert together == alone
    # The rows of different lengths did share steps (four prompts of 1 to 11 tokens).
    assert server.health()["largest_batch"] >= 2 or before >= 2


def test_a_request_joins_one_in_flight(weights, server, client, one_thread):
    """A short request sent while a long one streams is prefilled, decoded beside it, and still gives its lone
    tokens; the long one's tokens are unchanged by its neighbour."""
    _, model = weights
    long_prompt = "I had always thought"
    stream = client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=600, temperature=0, stream=True,
                                       extra_body={"return_token_ids": True})
    pieces = []
    for chunk in stream:
        pieces.append(chunk.choices[0].text)
        if len(pieces) == 20:
            assert server.health()["active"] == 1
            joined = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0,
                                               extra_body={"return_token_ids": True})
            assert token_ids(joined.choices[0]) == reference_ids(model, PROMPT, 30)
            assert server.health()["active"] == 1, "the long request ended before the short one joined it"
    assert token_ids(chunk.choices[0]) == reference_ids(model, long_prompt, 600)


def test_queue_limit_answers_429_and_frees_everything(server):
    """Four slots and one waiting place: the sixth request is refused, not queued; closing the streams frees
    every slot and the server keeps serving."""
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1000, "temperature": 0, "stream": True}
    streams = []
    try:
        for _ in range(5):
            ctx = server.client.stream("POST", "/v1/completions", json=body)
            response = ctx.__enter__()
            streams.append(ctx)
            assert response.status_code == 200
        health = server.wait_for(lambda h: h["active"] == 4 and h["waiting"] == 1)
        assert (health["active"], health["waiting"]) == (4, 1)
        refused = server.client.post("/v1/completions", json={**body, "stream": False})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert refused.headers["retry-after"] == "1"
    finally:
        for ctx in streams:
            ctx.__exit__(None, None, None)
    health = server.wait_for(lambda h: h["active"] == 0 and h["waiting"] == 0)
    assert (health["active"], health["waiting"]) == (0, 0)
    ok = server.client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 3})
    assert ok.status_code == 200


def test_openai_client_rate_limit_error(server, client):
    with pytest.raises(openai.RateLimitError):
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1000, "temperature": 0, "stream": True}
        with server.client.stream("POST", "/v1/completions", json=body), \
             server.client.stream("POST", "/v1/completions", json=body), \
             server.client.stream("POST", "/v1/completions", json=body), \
             server.client.stream("POST", "/v1/completions", json=body), \
             server.client.stream("POST", "/v1/completions", json=body):
            server.wait_for(lambda h: h["waiting"] == 1)
            client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5)
    server.wait_for(lambda h: h["active"] == 0)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_slot(server, stream):
    cancelled = server.health()["finished"].get("cancelled", 0)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1000, "temperature": 0, "stream": stream}
    # A connection of its own, closed mid-reply.
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as own:
        if stream:
            with own.stream("POST", "/v1/completions", json=body) as response:
                lines = response.iter_lines()
                assert [next(lines) for _ in range(6)]  # three events
        else:
            with pytest.raises(httpx.ReadTimeout):
                own.post("/v1/completions", json=body, timeout=0.5)
    health = server.wait_for(lambda h: h["active"] == 0, timeout=10)
    assert health["active"] == 0
    assert health["finished"].get("cancelled", 0) == cancelled + 1
    assert server.client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2}).status_code == 200


# Bad input -------------------------------------------------------------------------------------------------

OK_COMPLETION = {"model": MODEL, "prompt": PROMPT, "max_tokens": 5}
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
BAD = [
    # (path, body, status, param, code)
    ("/v1/completions", b'{"model": "last.ckpt", "prompt": ', 400, None, "invalid_value"),
    ("/v1/completions", b"[1, 2]", 400, None, "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("/v1/completions", {**OK_COMPLETION, "temperature": 2.5}, 400, "temperature", "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "temperature": "hot"}, 400, "temperature", "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "top_k": 201}, 400, "top_k", "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "top_p": 0}, 400, "top_p", "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "max_tokens": 4097}, 400, "max_tokens", "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "max_tokens": 1024}, 400, "max_tokens", "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "prompt": ""}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "prompt": [1, 99999]}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "prompt": ["a", "b"]}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "prompt": "x" * 40000}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "prompt": "word " * 1000, "max_tokens": 100}, 400, None,
     "context_length_exceeded"),
    ("/v1/completions", {**OK_COMPLETION, "n": 2}, 400, "n", "unsupported_parameter"),
    ("/v1/completions", {**OK_COMPLETION, "logprobs": 3}, 400, "logprobs", "unsupported_parameter"),
    ("/v1/completions", {**OK_COMPLETION, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
    ("/v1/completions", {**OK_COMPLETION, "seed": 2**70}, 400, "seed", "invalid_value"),
    ("/v1/completions", {"model": MODEL}, 400, "prompt", "invalid_value"),
    ("/v1/chat/completions", {**OK_CHAT, "messages": []}, 400, "messages", "invalid_value"),
    ("/v1/chat/completions", {**OK_CHAT, "messages": [{"role": "wizard", "content": "Hi"}]}, 400, "messages",
     "invalid_value"),
    ("/v1/chat/completions", {**OK_CHAT, "messages": [{"role": "user", "content": "Hi"}] * 501}, 400, "messages",
     "invalid_value"),
    ("/v1/chat/completions", {**OK_CHAT, "messages": [{"role": "user", "content": "x" * 8001}]}, 400,
     "messages.0.content", "invalid_value"),
    ("/v1/chat/completions", {**OK_CHAT, "messages": [{"role": "user", "content": "x" * 7000}] * 5}, 400,
     "messages", "invalid_value"),
    ("/v1/chat/completions", {**OK_CHAT, "messages": [{"role": "assistant", "content": "Hi"}]}, 400, "messages",
     "invalid_value"),
    ("/v1/chat/completions", {**OK_CHAT, "max_completion_tokens": 0}, 400, "max_completion_tokens",
     "invalid_value"),
    ("/v1/chat/completions", {**OK_CHAT, "tools": [{"type": "function"}]}, 400, "tools", "unsupported_parameter"),
]


@pytest.mark.parametrize("path, body, status, param, code", BAD, ids=range(len(BAD)))
def test_bad_requests_get_openai_errors(server, path, body, status, param, code):
    if isinstance(body, bytes):
        response = server.client.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = server.client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code), error
    assert error["message"] and "Traceback" not in response.text


def test_other_http_errors_are_openai_json_too(server):
    no_key = httpx.post(server.url + "/v1/completions", json=OK_COMPLETION)
    wrong_key = httpx.post(server.url + "/v1/completions", json=OK_COMPLETION,
                           headers={"Authorization": "Bearer nope"})
    malformed_without_key = httpx.post(server.url + "/v1/completions", content=b"{")
    for response in (no_key, wrong_key, malformed_without_key):
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/health").status_code == 200  # probes need no key
    assert server.client.get("/v1/nothing").status_code == 404
    assert server.client.get("/v1/nothing").json()["error"]["type"] == "not_found_error"
    assert server.client.get("/v1/completions").status_code == 405
    huge = server.client.post("/v1/completions", content=b"x" * (2 << 20), headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and "error" in huge.json()


def test_openai_client_raises_its_typed_errors(server, client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=MODEL, prompt=PROMPT, temperature=3)
    with pytest.raises(openai.NotFoundError, match="gpt-4"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="maximum context length is 1024 tokens"):
        client.completions.create(model=MODEL, prompt="word " * 1100, max_tokens=5)
    assert server.health()["status"] == "ok"


# The command line and the other weight sources -------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    ([], "error: pass exactly one of ckpt_path"),
    (["ckpt_path={folder}/last.ckpt", "long_prompt=cut"], "error: long_prompt must be one of refuse, truncate, got 'cut'"),
    (["ckpt_path={folder}/last.ckpt", "max_batch=0"], "error: max_batch must be a positive integer, got 0"),
    (["ckpt_path={folder}/last.ckpt", "host=no.such.host.invalid"], "error: host=no.such.host.invalid port=8000 is no address"),
    (["ckpt_path={folder}/missing.ckpt"], "missing.ckpt does not exist"),
    (["ckpt_path={folder}/last.ckpt", "prot=80"], "prot"),
])
def test_cli_errors_are_one_line_and_exit_2(weights, args, message):
    folder, _ = weights
    result = run_cli("serve.py", *(a.format(folder=folder) for a in args))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_port_in_use(weights, server):
    folder, _ = weights
    port = server.url.rsplit(":", 1)[1]
    result = run_cli("serve.py", f"ckpt_path={folder / MODEL}", f"port={port}")
    assert (result.returncode, result.stderr) == (2, f"error: port {port} on 127.0.0.1 is in use; stop what holds it "
                                                     "or pass another port=N (port=0 picks a free one)\n")


def test_help():
    result = run_cli("serve.py", "--help")
    assert result.returncode == 0 and result.stdout.startswith("python serve.py ckpt_path=FILE|pretrained=NAME")
    from omegaconf import OmegaConf
    from tests.conftest import ROOT
    from tests.cli.test_help import help_text, section

    settings = section(help_text("serve"), "Settings")
    for key in OmegaConf.load(ROOT / "conf" / "serve.yaml"):
        if key not in ("defaults", "hydra"):
            assert f"{key}=" in settings or f"{key}." in settings, f"{key} is not in serve.py --help"


@pytest.mark.slow
def test_every_weight_source_is_served(tmp_path, one_thread):
    """A .pth (the book's, with model=), an exported .safetensors and a Hugging Face GPT-2 folder, as generate.py
    reads them; the .pth server truncates long prompts instead of refusing them."""
    model = tiny_model(seed=5, context_length=64)
    save_book_pth(model, tmp_path / "model.pth")
    save_safetensors(model, tmp_path / "model.safetensors")
    tiny_hf_gpt2(tmp_path / "gpt2-local")
    from gptlit.weights.io import model_from_weights, read_weights
    hf = model_from_weights(read_weights(str(tmp_path / "gpt2-local"))).eval()
    sources = [(["ckpt_path=" + str(tmp_path / "model.pth"), "model=tiny", "long_prompt=truncate"], model, "model.pth"),
               (["ckpt_path=" + str(tmp_path / "model.safetensors")], model, "model.safetensors"),
               (["pretrained=" + str(tmp_path / "gpt2-local"), "model_name=local"], hf, "local")]
    for args, reference, name in sources:
        server = Server(*args, log_dir=tmp_path)
        try:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
            out = client.completions.create(model=name, prompt=PROMPT, max_tokens=12, temperature=0,
                                            extra_body={"return_token_ids": True})
            assert token_ids(out.choices[0]) == reference_ids(reference, PROMPT, 12), name
            if name == "model.pth":
                long = client.completions.create(model=name, prompt=" ".join(["word"] * 80), max_tokens=10, temperature=0)
                assert long.model_extra["warning"] == ("the prompt had 80 tokens and the context holds 64, 10 of "
                                                       "them for the completion: its first 26 tokens were dropped")
                assert long.usage.prompt_tokens == 54
        finally:
            server.stop()


def test_serving_imports_no_framework():
    modules = ["gptlit.serving", "gptlit.serving.api", "gptlit.serving.engine", "gptlit.serving.server"]
    assert imported_frameworks(*modules) == set()


def test_sse_lines_are_openai_chunks(server):
    body = {**OK_CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with server.client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert {e["object"] for e in events} == {"chat.completion.chunk"} and len({e["id"] for e in events}) == 1
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 5
    assert all(e["usage"] is None for e in events[:-1])


# The engine and its parts, in process ---------------------------------------------------------------------


def test_engine_slots_move_and_join_without_changing_tokens(one_thread):
    """Rows finishing out of order (the last slot moves into the hole), rows joining late, a sampled row beside
    greedy ones: every request gets the tokens it gets alone."""
    from gptlit.serving.engine import Engine, Sampling

    model = tiny_model(seed=11, context_length=128)
    jobs = [(encode(PROMPTS[0]), Sampling(max_tokens=5), 0),
            (encode(PROMPTS[1]), Sampling(max_tokens=40), 0),
            (encode(PROMPTS[2]), Sampling(max_tokens=25), 0),
            (encode(PROMPTS[3]), Sampling(max_tokens=30, temperature=1.2, top_k=40, seed=5), 3),
            (encode("Gisburn"), Sampling(max_tokens=12), 9)]
    engine = Engine(model, max_batch=3, max_queue=4)
    together, reasons = run_engine(engine, jobs)
    assert reasons == ["length"] * 5
    assert engine.stats.largest_prefill == 3 and engine.stats.largest_batch == 3  # the first three ran together
    alone = [run_engine(Engine(model, max_batch=1), [(p, s, 0)])[0][0] for p, s, _ in jobs]
    assert together == alone
    assert alone[0] == reference_ids(model, PROMPTS[0], 5)
    assert alone[3] == reference_ids(model, PROMPTS[3], 30, seed=5, temperature=1.2, top_k=40)


def test_engine_queue_limit_and_cancel():
    from gptlit.serving.engine import Engine, QueueFull, Sampling

    engine = Engine(tiny_model(context_length=64), max_batch=2, max_queue=1)
    events = []
    requests = [engine.submit([1, 2], Sampling(max_tokens=10), lambda k, v: events.append((k, v))) for _ in range(3)]
    with pytest.raises(QueueFull):
        engine.submit([1, 2], Sampling(max_tokens=10), lambda k, v: None)
    engine.cancel(requests[2])  # still waiting: ends at once
    assert engine.load()["waiting"] == 2 and ("done", "cancelled") in events
    with torch.inference_mode():
        engine.step()
    assert engine.load()["active"] == 2
    engine.cancel(requests[0])
    with torch.inference_mode():
        engine.step()
    assert engine.load()["active"] == 1 and engine.stats.finished == {"cancelled": 2}


@pytest.mark.parametrize("tokens, stops, pieces, stopped", [
    (["Hel", "lo", " wor", "ld"], ["wor"], ["Hel", "lo", " "], True),
    (["a", "\n", "Us", "er", ":", " x"], ["\nUser:"], ["a", "", "", "", ""], True),
    (["a", "\n", "Us", "ed"], ["\nUser:"], ["a", "", "", "\nUsed"], False),
    (["x", "y"], [], ["x", "y"], False),
])
def test_text_stream_holds_back_what_may_start_a_stop(tokens, stops, pieces, stopped):
    tokenizer = load_tokenizer()
    ids = [tokenizer.encoding.encode_single_token(t) for t in tokens]
    stream = TextStream(tokenizer, stops)
    got = [stream.feed(i) for i in ids]
    assert got[: len(pieces)] == pieces and stream.stopped == stopped
    assert "".join(got) + stream.close() == ("".join(pieces) if stopped else "".join(tokens))


def test_text_stream_joins_a_character_split_over_tokens():
    tokenizer = load_tokenizer()
    ids = encode("café 😀")
    stream = TextStream(tokenizer)
    assert "".join(stream.feed(i) for i in ids) + stream.close() == "café 😀"


@pytest.mark.gpu
def test_engine_on_cuda_batched_equals_generate():
    from gptlit.serving.engine import Engine, Sampling

    model = tiny_model(seed=11, context_length=128).cuda()
    jobs = [(encode(p), Sampling(max_tokens=20 + 5 * i), i) for i, p in enumerate(PROMPTS)]
    together, _ = run_engine(Engine(model, max_batch=4), jobs)
    for (prompt, sampling, _), tokens in zip(jobs, together):
        ids = torch.tensor([prompt], device="cuda")
        expected = generate(model, ids, sampling.max_tokens, decoding=DecodingConfig(eos_id=ENDOFTEXT_ID))
        assert tokens == expected[0, len(prompt):].tolist()
