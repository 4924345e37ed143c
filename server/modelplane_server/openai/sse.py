"""Server-sent events for the streaming endpoints: typed chunks (the protocol's chunk models), the
in-band error event once the headers are out, and the closing `[DONE]`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from pydantic import BaseModel

from modelplane_server.engine.contract import GenerationDelta
from modelplane_server.http.errors import ApiError, ErrorType
from modelplane_server.http.streaming import close_quietly
from modelplane_server.openai.generation import Choices

logger = logging.getLogger(__name__)

DONE_EVENT = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def chunk_event(chunk: BaseModel, include_usage: bool) -> bytes:
    """A chunk; `usage` is only on the wire when the client asked for it (`null` until the end)."""
    return event(chunk.model_dump(exclude=None if include_usage else {"usage"}))


def error_event(error: Exception) -> bytes:
    logger.exception("a generation stream failed", exc_info=error)
    api_error = error if isinstance(error, ApiError) else None
    body = (api_error or ApiError(500, "The generation failed.", type=ErrorType.SERVER)).body()
    return event(body.model_dump())


async def stream_events(
    choices: Choices,
    chunks: Callable[[int, GenerationDelta], list[bytes]],
    usage_chunk: Callable[[list[GenerationDelta]], bytes] | None,
) -> AsyncGenerator[bytes, None]:
    """The events of a request's choices: `chunks` of each (choice index, delta) as the deltas
    come, then the usage chunk (when asked for, given every choice's last delta) and `[DONE]`. An
    error after the headers are sent is reported in-band."""
    lasts = [generation.first for generation in choices.generations]
    deltas = [generation.deltas() for generation in choices.generations]
    merged = _one(deltas[0]) if len(deltas) == 1 else _merged(deltas)
    try:
        async for index, delta in merged:
            lasts[index] = delta
            for chunk in chunks(index, delta):
                yield chunk
        if usage_chunk is not None:
            yield usage_chunk(lasts)
    except Exception as error:  # the headers are sent: report in-band, then end the stream
        yield error_event(error)
    finally:
        await close_quietly(merged)
        for stream in deltas:
            await close_quietly(stream)
    yield DONE_EVENT


async def _one(
    deltas: AsyncIterator[GenerationDelta],
) -> AsyncIterator[tuple[int, GenerationDelta]]:
    async for delta in deltas:
        yield 0, delta


async def _merged(
    streams: list[AsyncIterator[GenerationDelta]],
) -> AsyncIterator[tuple[int, GenerationDelta]]:
    """The deltas of several choices as each arrives, tagged with the choice's index."""
    queue: asyncio.Queue[tuple[int, GenerationDelta | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerationDelta]) -> None:
        try:
            async for delta in stream:
                await queue.put((index, delta))
        except Exception as error:
            await queue.put((index, error))
        await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
