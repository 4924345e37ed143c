"""Property test: whatever schemathesis generates from the app's own OpenAPI schema, valid or not,
the server answers without a 5xx (and every 4xx is OpenAI-shaped)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.generation.case import Case
from schemathesis.python import asgi
from schemathesis.schemas import BaseSchema

from modelplane_server.engine.contract import EngineObserver
from modelplane_server.http.app import create_app
from modelplane_server.settings import ServerSettings

from .fakes import FakeEmbeddingEngine, FakeGenerationEngine

EXAMPLES_PER_OPERATION = 60

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# Operations without inputs have no invalid inputs: they get positive cases only.
OPERATIONS = [
    *[
        (path, "POST", mode)
        for path in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/similarity")
        for mode in (POSITIVE, NEGATIVE)
    ],
    *[
        (path, "GET", POSITIVE)
        for path in ("/v1/models", "/health/live", "/health/ready", "/stats", "/metrics")
    ],
]


@pytest.fixture
def fuzzed_app() -> Iterator[FastAPI]:
    """A fresh app per test: schemathesis' pytest plugin ends every ASGI lifespan it started when
    a test ends, and a drained app stays drained."""

    def loader(
        _settings: ServerSettings, observer: EngineObserver, _progress: Callable[[str], None]
    ) -> tuple[FakeGenerationEngine, FakeEmbeddingEngine]:
        return FakeGenerationEngine(observer=observer, max_queue=1000), FakeEmbeddingEngine()

    app = create_app(ServerSettings(api_key=None, api_key_file=None), loader=loader)
    with asgi.get_client(app) as client:  # type: ignore[arg-type]  # starts the lifespan
        deadline = time.monotonic() + 10
        while client.get(f"http://{asgi.HOST}/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the fake engines never became ready"
            time.sleep(0.01)
    yield app
    asgi.shutdown_lifespans()


@pytest.fixture
def api_schema(fuzzed_app: FastAPI) -> BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS)
def test_generated_requests_never_get_a_5xx(
    api_schema: BaseSchema, path: str, method: str, mode: GenerationMode
) -> None:
    strategy = api_schema[path][method].as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Case[Any]) -> None:
        response = case.call()
        assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}

    check()
