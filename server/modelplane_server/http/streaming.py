"""Noticing that the client went away, for streaming and non-streaming responses alike.

A generation holds a batch slot until its engine iterator is closed, so a client that disconnects
must close it at once, not when the next write fails (uvicorn drops writes to a closed connection
silently). Both helpers here listen for the ASGI `http.disconnect` message themselves, independently
of the ASGI spec version the server reports and of any middleware (vLLM's reason for its
`with_cancellation`: `request.is_disconnected()` is unreliable behind middleware).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0
T = TypeVar("T")


class ClientDisconnectedError(Exception):
    """The client closed the connection before the response was ready."""


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone. The request body must already have been read."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnected(receive: Receive, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`, cancelling it and raising `ClientDisconnectedError` if the client goes
    first."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            work.cancel()
        watcher.cancel()
    if work.cancelled() or not work.done():
        with contextlib.suppress(asyncio.CancelledError):
            await work
        raise ClientDisconnectedError
    return work.result()


async def close_quietly(iterator: AsyncIterator[object]) -> None:
    """Close an async iterator (an engine stream: this frees its batch slot), even from a
    cancelled task, and never raise."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT_S):
        try:
            await aclose()
        except Exception:
            logger.exception("closing an engine stream failed")


class EventStreamResponse(StreamingResponse):
    """Server-sent events from `events`, stopped (and `events` closed) the moment the client
    disconnects, whether or not a write is pending."""

    def __init__(
        self,
        events: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        self.events = events
        self.on_close = on_close  # runs even if `events` never started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            async with anyio.create_task_group() as group:

                async def pump() -> None:
                    try:
                        async for event in self.events:
                            await send(
                                {"type": "http.response.body", "body": event, "more_body": True}
                            )
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    except OSError:
                        logger.debug("client went away while streaming")
                    finally:
                        group.cancel_scope.cancel()

                async def watch() -> None:
                    await wait_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(pump)
                group.start_soon(watch)
        finally:
            await close_quietly(self.events)
            with anyio.CancelScope(shield=True):
                await self.on_close()
