"""Server-sent events for the streaming endpoints: typed chunks (the protocol's chunk models), the
in-band error event once the headers are out, and the closing `[DONE]`."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

from pydantic import BaseModel

from modelplane_server.engine.contract import GenerationDelta
from modelplane_server.http.errors import ApiError, ErrorType
from modelplane_server.http.streaming import close_quietly
from modelplane_server.openai.generation import Generation

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
    generation: Generation,
    chunks: Callable[[GenerationDelta], list[bytes]],
    usage_chunk: Callable[[GenerationDelta], bytes] | None,
) -> AsyncGenerator[bytes, None]:
    """The events of one generation: `chunks` of each delta, then the usage chunk (when asked
    for) and `[DONE]`. An error after the headers are sent is reported in-band."""
    last = generation.first
    deltas = generation.deltas()
    try:
        async for delta in deltas:
            last = delta
            for chunk in chunks(delta):
                yield chunk
        if usage_chunk is not None:
            yield usage_chunk(last)
    except Exception as error:  # the headers are sent: report in-band, then end the stream
        yield error_event(error)
    finally:
        await close_quietly(deltas)
    yield DONE_EVENT
