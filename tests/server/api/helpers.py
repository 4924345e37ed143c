"""Running the app in-process against fake engines, and reading what it answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from modelplane_server.engine.contract import EngineObserver
from modelplane_server.http.app import create_app
from modelplane_server.http.lifecycle import ServerState
from modelplane_server.settings import ServerSettings

from .fakes import FakeEmbeddingEngine, FakeGenerationEngine

BASE_URL = "http://modelplane.test"


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `predicate` until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.005)


def settings(**overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {"api_key": None, "api_key_file": None, **overrides}
    return ServerSettings(**values)


@dataclass
class Served:
    app: FastAPI
    client: httpx.AsyncClient
    generation: FakeGenerationEngine
    embedding: FakeEmbeddingEngine | None
    state: ServerState


@contextlib.asynccontextmanager
async def serve(
    *,
    generation: FakeGenerationEngine | None = None,
    embedding: FakeEmbeddingEngine | None = None,
    without_embeddings: bool = False,
    load_gate: threading.Event | None = None,
    wait_ready: bool = True,
    **setting_overrides: Any,
) -> AsyncIterator[Served]:
    """The app with fake engines, its lifespan running, and a client for it."""
    generation = generation or FakeGenerationEngine()
    if embedding is None and not without_embeddings:
        embedding = FakeEmbeddingEngine()

    def loader(
        _settings: ServerSettings, observer: EngineObserver, progress: Callable[[str], None]
    ) -> tuple[FakeGenerationEngine, FakeEmbeddingEngine | None]:
        progress("loading the fakes")
        if load_gate is not None:
            assert load_gate.wait(timeout=30), "the test never released the load gate"
        generation.observer = observer
        return generation, embedding

    app = create_app(settings(**setting_overrides), loader=loader)
    state: ServerState = app.state.server
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            if wait_ready:
                await eventually(lambda: state.lifecycle.accepting)
            yield Served(app, client, generation, embedding, state)


def sse_events(body: str) -> list[str]:
    """The `data:` payloads of a server-sent-events body, in order; asserts the framing."""
    assert body.endswith("\n\n"), body[-50:]
    events = []
    for block in body.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        events.append(block.removeprefix("data: "))
    return events


def sse_json(body: str) -> list[dict[str, Any]]:
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    assert "[DONE]" not in events[:-1]
    return [json.loads(event) for event in events[:-1]]


def assert_openai_error(
    response: httpx.Response, status: int, param: str | None = None
) -> dict[str, Any]:
    """The status and the OpenAI error shape, `{"error": {message, type, param, code}}`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert error["type"]
    if param is not None:
        assert error["param"] == param, error
    return error
