"""The API fuzzed from its own OpenAPI document (schemathesis, loopback only): every route, a bounded number of
generated requests each, valid and invalid. No 5xx; every status and content type is one the document declares;
every 4xx is in OpenAI's error shape; invalid data is rejected; the server is healthy and answers afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.serve.live_server import TIMEOUT_S, LiveServer, serve
from utils.lm.loading import LoadedModel, load_model

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis: make install-extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    status_code_conformance,
)

MAX_EXAMPLES = 50  # per route and generation mode: each field's edge values; about 20 s in all
TOKEN_CAP = 16  # generated token budgets above this are lowered to it, so a fuzzed request runs in milliseconds
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_new_tokens")
ERROR_FIELDS = {"message", "type", "param", "code"}
ROUTES = ("GET /health", "GET /v1/models", "POST /v1/completions", "POST /v1/chat/completions", "POST /generate")

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def fuzzed_server(serve_model_dir: Path) -> Iterator[LiveServer]:
    loaded: LoadedModel = load_model(serve_model_dir)
    with serve(serve_model_dir, loaded) as live:
        live.wait_until(lambda: live.state.generator is not None, "the model")
        yield live


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")


def _cap_tokens(case: Any) -> Any:
    if isinstance(case.body, dict):
        for name in TOKEN_FIELDS:
            if isinstance(case.body.get(name), int) and case.body[name] > TOKEN_CAP:
                case.body[name] = TOKEN_CAP  # still a valid positive budget; invalid ones are left as generated
    return case


def openai_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx body is {"error": {"message", "type", "param", "code"}} with a message, as OpenAI sends."""
    if 400 <= response.status_code < 500:
        error = response.json().get("error")
        assert isinstance(error, dict) and set(error) == ERROR_FIELDS and error["message"], response.text[:300]
    return None


def test_the_document_lists_every_route(api_schema: Any) -> None:
    listed = {f"{op.ok().method.upper()} {op.ok().path}" for op in api_schema.get_all_operations()}
    assert listed == set(ROUTES)


# schemathesis' own pytest integration (schema.parametrize on a fixture) fails on pytest 9 (`_nodeid`), so each
# route's strategy is drawn with Hypothesis directly: the same generated cases and the same checks.
# Negative cases only where there is a body or parameter to break: the GET routes take none.
FUZZ_CASES = [(route, "positive") for route in ROUTES] + [(r, "negative") for r in ROUTES if r.startswith("POST")]


@pytest.mark.parametrize("route, mode", FUZZ_CASES)
def test_every_route_survives_its_fuzzed_requests(route: str, mode: str, api_schema: Any) -> None:
    method, path = route.split(" ")
    strategy = api_schema[path][method].as_strategy(generation_mode=GenerationMode(mode))
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, negative_data_rejection,
              openai_error_shape]

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case: Any) -> None:
        _cap_tokens(case).call_and_validate(checks=checks, timeout=TIMEOUT_S)

    fuzz()


def test_the_server_is_healthy_after_the_fuzzing(fuzzed_server: LiveServer) -> None:
    with httpx.Client(base_url=fuzzed_server.url, timeout=TIMEOUT_S) as http:
        assert http.get("/health").json()["status"] == "ok"
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert fuzzed_server.state.slots.running == 0 and fuzzed_server.state.slots.waiting == 0
