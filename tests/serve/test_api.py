"""The API server for real: uvicorn on a free loopback port, every endpoint and field of the schema, streaming,
validation (400/422), 401/404/413/429/503, client disconnects, CORS, the official openai client, and the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the HTTP client the pinned openai package ships with
import pytest

from tests.serve.live_server import LONG, LOOPBACK, TIMEOUT_S, USER, LiveServer, open_stream, serve
from utils.lm.loading import LoadedModel, load_model
from utils.serve.api import MAX_BODY_BYTES, create_app
from utils.serve.config import ServeConfig
from utils.sessions.runner import free_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def loaded(serve_model_dir: Path) -> LoadedModel:
    return load_model(serve_model_dir)


@pytest.fixture(scope="module")
def server(serve_model_dir: Path, loaded: LoadedModel) -> Iterator[LiveServer]:
    with serve(serve_model_dir, loaded) as live:
        live.wait_until(lambda: live.state.generator is not None, "the model")
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http:
        yield http


def post(client: httpx.Client, path: str, **body: Any) -> httpx.Response:
    return client.post(path, json=body)


def sse_events(response: httpx.Response) -> list[Any]:
    """The data of each server-sent event, JSON-decoded except the final [DONE]."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return events


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


# --- Endpoints and schema -----------------------------------------------------------------------------------------

def test_health_is_503_while_loading_then_200(serve_model_dir: Path, loaded: LoadedModel) -> None:
    release = threading.Event()

    def slow_load() -> LoadedModel:
        release.wait(TIMEOUT_S)
        return loaded

    config = ServeConfig(model_path=str(serve_model_dir), mode="api")
    with LiveServer(create_app(config, load=slow_load)) as live, httpx.Client(base_url=live.url) as http:
        loading = http.get("/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        error = assert_error(post(http, "/v1/completions", prompt="Hi"), 503)
        assert error["code"] == "model_not_ready"
        release.set()
        live.wait_until(lambda: http.get("/health").status_code == 200, "health 200")
        assert http.get("/health").json() == {"status": "ok", "model": serve_model_dir.name, "running": 0,
                                              "waiting": 0, "auth": False}


def test_models_lists_the_model_directory(client: httpx.Client, serve_model_dir: Path) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and len(body["data"]) == 1
    model = body["data"][0]
    assert model["id"] == serve_model_dir.name and model["object"] == "model" and model["owned_by"] == "lumi"
    assert isinstance(model["created"], int) and model["max_model_len"] == 2048


def test_chat_completion_has_every_field(client: httpx.Client, serve_model_dir: Path, loaded: LoadedModel) -> None:
    response = post(client, "/v1/chat/completions", model=serve_model_dir.name, messages=USER, max_tokens=5)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == serve_model_dir.name
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    prompt = loaded.tokenizer.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    prompt_tokens = len(loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5}


def test_completion_has_every_field(client: httpx.Client) -> None:
    body = post(client, "/v1/completions", prompt="Once upon a time", max_tokens=4, seed=1).json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    (choice,) = body["choices"]
    assert set(choice) == {"index", "text", "finish_reason", "logprobs"} and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 4


def test_stop_sequence_gives_finish_reason_stop(client: httpx.Client) -> None:
    full = post(client, "/v1/completions", prompt="Once upon a time", max_tokens=20).json()["choices"][0]["text"]
    stop = full[6:9]
    cut = post(client, "/v1/completions", prompt="Once upon a time", max_tokens=20, stop=[stop]).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == full[: full.index(stop)]


def test_seed_makes_sampling_reproducible(client: httpx.Client) -> None:
    def sample(seed: int) -> str:
        body = post(client, "/v1/completions", prompt="Once", max_tokens=12, temperature=1.0, seed=seed).json()
        return body["choices"][0]["text"]

    assert sample(7) == sample(7) != sample(8)


def test_chat_stream_order_and_done_and_equal_to_non_streamed(client: httpx.Client) -> None:
    request = {"messages": USER, "max_tokens": 12, "temperature": 0}
    whole = post(client, "/v1/chat/completions", **request).json()["choices"][0]["message"]["content"]
    with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length", "logprobs": None}
    middle = [c["choices"][0] for c in chunks[1:-1]]
    assert middle and all(set(m["delta"]) == {"content"} and m["finish_reason"] is None for m in middle)
    assert "".join(m["delta"]["content"] for m in middle) == whole


def test_completion_stream_with_usage_equals_non_streamed(client: httpx.Client) -> None:
    request = {"prompt": "Once upon a time", "max_tokens": 10, "stop": "zzz"}
    whole = post(client, "/v1/completions", **request).json()
    with client.stream("POST", "/v1/completions",
                       json={**request, "stream": True, "stream_options": {"include_usage": True}}) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"] == whole["usage"]
    assert events[-3]["choices"][0]["finish_reason"] == "length" and events[-3]["choices"][0]["text"] == ""
    assert {e["object"] for e in events[:-1]} == {"text_completion"}
    assert "".join(e["choices"][0]["text"] for e in events[:-3]) == whole["choices"][0]["text"]


def test_generate_simple_form(client: httpx.Client, loaded: LoadedModel) -> None:
    body = post(client, "/generate", prompt="Once upon a time", max_new_tokens=5, temperature=0,
                template="none").json()
    assert set(body) == {"text", "finish_reason", "model", "usage"} and body["usage"]["completion_tokens"] == 5
    assert body["usage"]["prompt_tokens"] == len(loaded.tokenizer("Once upon a time")["input_ids"])
    chat = post(client, "/generate", prompt="Once upon a time", max_new_tokens=5).json()  # server's chatml
    assert chat["usage"]["prompt_tokens"] > body["usage"]["prompt_tokens"]
    assert_error(post(client, "/generate", prompt="x", template="fancy"), 400, "template")
    assert_error(post(client, "/generate", prompt="x", max_tokens=3), 422)  # the simple form has max_new_tokens


def test_unknown_model_and_route_are_404(client: httpx.Client) -> None:
    assert assert_error(post(client, "/v1/completions", model="gpt-9", prompt="x"), 404, "model")["code"] == \
        "model_not_found"
    assert_error(client.get("/v1/nothing"), 404)


# --- Validation ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, param", [
    ("temperature", -0.1, "temperature"), ("temperature", 2.01, "temperature"), ("top_p", 0, "top_p"),
    ("top_p", 1.5, "top_p"), ("top_k", -1, "top_k"), ("max_tokens", 0, "max_tokens"),
    ("repetition_penalty", 0, "repetition_penalty"), ("stop", "", "stop"), ("stop", ["ok", ""], "stop"),
    ("stop", ["a", "b", "c", "d", "e"], "stop"), ("n", 2, "n"), ("seed", -5, "seed"),
])
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_out_of_range_values_are_400(client: httpx.Client, route: str, field: str, value: Any, param: str) -> None:
    body = {"messages": USER} if route == "/v1/chat/completions" else {"prompt": "Hi"}
    error = assert_error(post(client, route, **body, **{field: value}), 400, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", [
    {}, {"messages": []}, {"messages": [{"role": "robot", "content": "hi"}]},
    {"messages": [{"role": "user"}]}, {"messages": USER, "temperature": "hot"}, {"messages": USER, "max_tokens": 1.5},
    {"messages": USER, "stop": 3}, {"messages": "hello"},
    # found by the fuzzer: pydantic's lax mode took these as 0 and true
    {"messages": USER, "max_tokens": False}, {"messages": USER, "stream": 1}, {"messages": USER, "temperature": True},
])
def test_schema_errors_are_422_in_openai_shape(client: httpx.Client, body: dict[str, Any]) -> None:
    error = assert_error(post(client, "/v1/chat/completions", **body), 422)
    assert error["type"] == "invalid_request_error" and error["message"].startswith("invalid request:")


def test_invalid_json_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/completions", content=b'{"prompt": ', headers={"Content-Type": "application/json"})
    assert "JSON" in assert_error(response, 422)["message"]


def test_prompt_plus_max_tokens_beyond_context_is_400_naming_both(client: httpx.Client, loaded: LoadedModel) -> None:
    prompt = "fox " * 50
    prompt_tokens = len(loaded.tokenizer(prompt)["input_ids"])
    error = assert_error(post(client, "/v1/completions", prompt=prompt, max_tokens=2040), 400, "prompt")
    assert error["code"] == "context_length_exceeded"
    for number in (2048, prompt_tokens, 2040, prompt_tokens + 2040):
        assert re.search(rf"\b{number}\b", error["message"]), error["message"]
    # without max_tokens the server's default shrinks to what the context has left
    per_fox = len(loaded.tokenizer("fox " * 10)["input_ids"]) // 10
    long_prompt = "fox " * ((2048 - 5) // per_fox)
    tokens = len(loaded.tokenizer(long_prompt)["input_ids"])
    assert 2048 - 8 < tokens < 2048
    body = post(client, "/v1/completions", prompt=long_prompt).json()
    assert body["usage"]["completion_tokens"] == 2048 - tokens


def test_body_over_limit_is_413(client: httpx.Client) -> None:
    big = {"prompt": "a" * (MAX_BODY_BYTES + 10)}
    assert_error(client.post("/v1/completions", json=big), 413)
    chunked = iter([b'{"prompt": "', b"a" * MAX_BODY_BYTES, b'"}'])  # no Content-Length: the bytes are counted
    assert_error(client.post("/v1/completions", content=chunked, headers={"Content-Type": "application/json"}), 413)
    assert client.get("/health").status_code == 200


# --- Security -----------------------------------------------------------------------------------------------------

def test_the_chat_page_is_served_and_needs_nothing_from_elsewhere(client: httpx.Client) -> None:
    """Offline by construction: the page (tested in a browser in test_web.py) names no other server."""
    page = client.get("/")
    assert page.status_code == 200 and "<title>Lumi chat</title>" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    assert "<link" not in page.text and "src=" not in page.text  # no stylesheet or script from a URL
    assert "/" not in client.get("/openapi.json").json()["paths"]  # a page, not an API route


@pytest.mark.parametrize("from_env", [False, True])
def test_api_key_guards_everything_but_health_and_the_page(serve_model_dir: Path, loaded: LoadedModel,
                                                            from_env: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "s3cret-key"
    if from_env:
        monkeypatch.setenv("LUMI_API_KEY", key)
    with serve(serve_model_dir, loaded, api_key=None if from_env else key) as live, \
            httpx.Client(base_url=live.url, timeout=TIMEOUT_S) as http:
        live.wait_until(lambda: live.state.generator is not None, "the model")
        assert http.get("/health").json()["auth"] is True  # the chat page asks for the key
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        calls = [("GET", "/v1/models", None), ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
                 ("POST", "/v1/chat/completions", {"messages": USER, "max_tokens": 2}),
                 ("POST", "/generate", {"prompt": "Hi", "max_new_tokens": 2})]
        for method, path, body in calls:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
                response = http.request(method, path, json=body, headers=headers)
                assert assert_error(response, 401)["code"] == "invalid_api_key"
                assert response.headers["www-authenticate"] == "Bearer"
            assert http.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_cors_only_for_the_given_origins(server: LiveServer, client: httpx.Client, serve_model_dir: Path,
                                         loaded: LoadedModel) -> None:
    preflight = {"Origin": "http://app.test", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/completions", headers=preflight).headers
    with serve(serve_model_dir, loaded, cors_origins=["http://app.test"], api_key="k") as live, \
            httpx.Client(base_url=live.url) as http:
        allowed = http.options("/v1/completions", headers=preflight)
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://app.test"
        other = http.options("/v1/completions", headers={**preflight, "Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in other.headers


# --- Scheduling, disconnects, the event loop ----------------------------------------------------------------------

def test_queue_full_is_429_and_a_finished_stream_frees_the_slot(serve_model_dir: Path, loaded: LoadedModel) -> None:
    with serve(serve_model_dir, loaded, max_concurrent=1, max_queue=0) as live, \
            httpx.Client(base_url=live.url, timeout=TIMEOUT_S) as http:
        live.wait_until(lambda: live.state.generator is not None, "the model")
        with open_stream(http):
            refused = post(http, "/v1/completions", prompt="Hi", max_tokens=2)
            assert assert_error(refused, 429)["type"] == "rate_limit_error" and refused.headers["retry-after"] == "1"
            assert post(http, "/v1/completions", prompt="Hi", max_tokens=2, stream=True).status_code == 429
        live.wait_until(lambda: live.state.slots.running == 0, "the slot to free")
        assert post(http, "/v1/completions", prompt="Hi", max_tokens=2).status_code == 200
        assert live.state.stats["rejected"] == 2 and live.state.stats["cancelled"] == 1


def test_requests_beyond_the_running_one_wait_in_the_queue(server: LiveServer, client: httpx.Client) -> None:
    """While a stream holds the only slot, three more requests wait in line (and /health says so); when it ends,
    each is answered."""
    results: list[int] = []

    def ask() -> None:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http:
            results.append(post(http, "/v1/completions", prompt="Hi", max_tokens=30).status_code)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    with open_stream(client):
        for thread in threads:
            thread.start()
        server.wait_until(lambda: server.state.slots.waiting == 3, "three requests waiting")
        with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http:
            health = http.get("/health").json()
        assert (health["running"], health["waiting"]) == (1, 3)
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert results == [200] * 3 and server.state.slots.waiting == 0


def test_client_disconnect_mid_stream_stops_generation(server: LiveServer, client: httpx.Client) -> None:
    cancelled, completed = server.state.stats["cancelled"], server.state.stats["completed"]
    with open_stream(client):
        assert server.state.slots.running == 1
    # counted as cancelled, not completed: it stopped early instead of running its 1,500 tokens
    server.wait_until(lambda: server.state.stats["cancelled"] == cancelled + 1, "the generation to be cancelled")
    assert server.state.slots.running == 0 and server.state.stats["completed"] == completed
    assert post(client, "/v1/completions", prompt="Hi", max_tokens=2).status_code == 200


def test_event_loop_answers_during_generation_and_non_stream_disconnect_cancels(server: LiveServer) -> None:
    cancelled = server.state.stats["cancelled"]
    with socket.create_connection((LOOPBACK, int(server.url.rsplit(":", 1)[1]))) as raw:
        body = json.dumps({"prompt": "Once", "max_tokens": LONG}).encode()
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        server.wait_until(lambda: server.state.slots.running == 1, "the generation to start")
        with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http:
            health = http.get("/health")
            # running 1 in the answer: the loop answered while the generation held its slot, not after it
            assert health.status_code == 200 and health.json()["running"] == 1
    server.wait_until(lambda: server.state.stats["cancelled"] == cancelled + 1, "the cancellation")
    assert server.state.slots.running == 0


# --- The official openai client -----------------------------------------------------------------------------------

def test_openai_client_chats_streams_and_lists_models(server: LiveServer, serve_model_dir: Path) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)
    models = client.models.list()
    assert [m.id for m in models.data] == [serve_model_dir.name]
    chat = client.chat.completions.create(model=serve_model_dir.name, messages=USER, max_tokens=6, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 6
    stream = client.chat.completions.create(model=serve_model_dir.name, messages=USER, max_tokens=6,
                                            temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content
    text = client.completions.create(model=serve_model_dir.name, prompt="Once", max_tokens=3)
    assert text.choices[0].finish_reason == "length" and text.usage is not None


# --- The CLI ------------------------------------------------------------------------------------------------------

def test_cli_serves_prints_where_and_stops_on_ctrl_c(serve_model_dir: Path) -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "scripts/06_serve.py", "--model_path", str(serve_model_dir),
                                "--mode", "api", "--port", str(port), "--cpu_threads", "1"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        url = f"http://{LOOPBACK}:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            assert process.poll() is None and time.monotonic() < deadline, "the server did not become healthy"
            time.sleep(0.2)
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, output
    assert f"at {url}" in output and f"curl {url}/v1/chat/completions" in output
