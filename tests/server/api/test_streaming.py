"""The disconnect helpers close what they were given even when the client is gone before any of
it ran: that is what frees an engine slot in the narrowest races."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.requests import Request
from starlette.types import Message

from modelplane_server.engine.contract import GenerationDelta
from modelplane_server.http.streaming import (
    ClientDisconnectedError,
    EventStreamResponse,
    until_disconnected,
)
from modelplane_server.openai.generation import Choices, Generation, collect

HTTP_SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "method": "POST",
    "path": "/",
    "headers": [],
}


async def gone() -> Message:
    return {"type": "http.disconnect"}


async def test_a_stream_whose_client_left_first_still_runs_its_close_hook() -> None:
    started = False
    closed: list[str] = []

    async def events() -> AsyncIterator[bytes]:
        nonlocal started
        started = True
        await asyncio.Event().wait()  # a generation that never produces
        yield b""

    async def on_close() -> None:
        closed.append("engine stream closed")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    response = EventStreamResponse(events(), on_close=on_close)
    await asyncio.wait_for(response(HTTP_SCOPE, gone, send), timeout=5)
    assert closed == ["engine stream closed"]
    assert sent[0]["type"] == "http.response.start"


async def test_until_disconnected_cancels_the_work_and_raises() -> None:
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def later_gone() -> Message:
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    with pytest.raises(ClientDisconnectedError):
        await asyncio.wait_for(until_disconnected(later_gone, forever()), timeout=5)
    assert cancelled.is_set()


async def test_until_disconnected_returns_the_result_when_work_wins() -> None:
    async def never_gone() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def answer() -> int:
        return 42

    assert await until_disconnected(never_gone, answer()) == 42


class EngineStream:
    """An engine stream that never produces and records being closed."""

    def __init__(self) -> None:
        self.closed = False

    def __aiter__(self) -> EngineStream:
        return self

    async def __anext__(self) -> GenerationDelta:
        await asyncio.Event().wait()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


async def test_collecting_a_generation_whose_client_left_closes_the_engine_stream() -> None:
    finished: list[str] = []
    stream = EngineStream()
    generation = Generation(
        "cmpl-1", "m", GenerationDelta("a", (1,), 1, 1), stream, lambda: finished.append("done")
    )
    choices = Choices("cmpl-1", "m", [generation])
    with pytest.raises(ClientDisconnectedError):
        await asyncio.wait_for(collect(Request(HTTP_SCOPE, receive=gone), choices), 5)
    assert stream.closed
    assert finished == ["done"]
