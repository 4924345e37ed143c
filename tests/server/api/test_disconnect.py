"""A client that goes away frees its engine slot at once, streaming or not, queued or running.

httpx's ASGI transport cannot hang up mid-response, so these tests drive the app at the ASGI level
with a `receive` that reports `http.disconnect` when the test says so.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI
from starlette.types import Message

from .fakes import FakeGenerationEngine
from .helpers import eventually, serve


class Connection:
    """One HTTP request to an ASGI app whose client can hang up."""

    def __init__(self, app: FastAPI, path: str, body: dict[str, Any]) -> None:
        self.sent: list[Message] = []
        self.hung_up = asyncio.Event()
        self._body = json.dumps(body).encode()
        self._body_sent = False
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 50000),
            "server": ("test", 80),
        }
        self.task = asyncio.get_running_loop().create_task(app(scope, self.receive, self.send))

    async def receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self.hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def body_chunks(self) -> int:
        return sum(1 for m in self.sent if m["type"] == "http.response.body" and m.get("body"))

    async def hang_up(self) -> None:
        self.hung_up.set()
        await asyncio.wait_for(self.task, timeout=5)


LONG_CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 200}


async def test_a_streaming_client_that_hangs_up_frees_its_slot() -> None:
    engine = FakeGenerationEngine(step_delay_s=0.005)
    async with serve(generation=engine) as served:
        connection = Connection(served.app, "/v1/chat/completions", {**LONG_CHAT, "stream": True})
        await eventually(lambda: connection.body_chunks() >= 3)
        await connection.hang_up()
        await eventually(lambda: not engine.running and not engine.waiting)
        [request] = engine.submitted
        assert engine.cancelled == [request.request_id]
        steps_after_cancel = engine.steps_total
        assert steps_after_cancel < 100  # it stopped long before its 200 tokens
        assert served.state.http_in_flight == 0
        # The next request is served normally and the cancelled one is counted.
        after = await served.client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert after.status_code == 200
        assert engine.steps_total == steps_after_cancel + 2
        metrics = (await served.client.get("/metrics")).text
    assert 'modelplane_requests_finished_total{finished_reason="cancelled"} 1.0' in metrics
    assert 'status="499"' not in metrics  # a streaming response had already started: 200


async def test_a_non_streaming_client_that_hangs_up_frees_its_slot() -> None:
    engine = FakeGenerationEngine(step_delay_s=0.005)
    async with serve(generation=engine) as served:
        connection = Connection(served.app, "/v1/chat/completions", LONG_CHAT)
        await eventually(lambda: engine.steps_total >= 3)
        await connection.hang_up()
        await eventually(lambda: not engine.running)
        assert len(engine.cancelled) == 1
        assert engine.steps_total < 100
        metrics = (await served.client.get("/metrics")).text
    assert 'route="/v1/chat/completions",status="499"' in metrics


async def test_a_queued_client_that_hangs_up_leaves_the_queue() -> None:
    engine = FakeGenerationEngine()
    async with serve(generation=engine) as served:
        engine.pause()
        connection = Connection(served.app, "/v1/completions", {"prompt": "x", "stream": True})
        await eventually(lambda: len(engine.waiting) == 1)
        await connection.hang_up()
        assert not engine.waiting
        assert len(engine.cancelled) == 1
        assert served.state.http_in_flight == 0


async def test_an_embedding_client_that_hangs_up_is_cancelled() -> None:
    async with serve() as served:
        assert served.embedding is not None
        served.embedding.gate.clear()
        connection = Connection(served.app, "/v1/embeddings", {"input": ["a", "b"]})
        await eventually(lambda: served.embedding is not None and served.embedding.in_flight == 1)
        await connection.hang_up()
        assert served.embedding.cancelled == 1
        assert served.embedding.in_flight == 0
