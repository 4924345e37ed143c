"""What completions and chat share: submitting a generation and collecting its result.

Check the prompt and `max_tokens` against the context, submit a `GenerationRequest` with its queue
and total deadlines, and await the first delta before the response starts, so a request refused or
timed out in the queue still gets a proper status code instead of a 200 stream with an error. Every
await on the engine races the client's disconnect, and every exit path closes the engine iterator,
which frees the batch slot.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelplane_server.engine.contract import (
    EngineError,
    FinishReason,
    GenerationDelta,
    GenerationEngine,
    GenerationRequest,
)
from modelplane_server.http.errors import ApiError, ErrorType, invalid, unavailable
from modelplane_server.http.streaming import (
    EventStreamResponse,
    close_quietly,
    until_disconnected,
)
from modelplane_server.openai.admission import DRAINING_RETRY_AFTER_S, Admission, engine_error
from modelplane_server.openai.protocol import SamplingFields, Usage

# Tokenizing runs ~5 MB/s: longer texts go to a worker thread so the event loop (and with it every
# other request and the probes) never stalls behind one big prompt.
INLINE_TOKENIZE_CHARS = 16_384


@dataclass(frozen=True)
class Endpoint:
    """How an endpoint names its requests (`cmpl-...`) and the field that holds its input."""

    id_prefix: str
    input_param: str


@dataclass
class Generation:
    """A submitted generation: its first delta and the rest of its stream.

    Whoever takes it must `close()` it however things end, even if `deltas()` was never started
    (a task cancelled before it ran, a stream whose client left before the first write): closing
    the engine stream is what frees the batch slot.
    """

    request_id: str
    model: str
    first: GenerationDelta
    rest: AsyncIterator[GenerationDelta]
    on_finished: Callable[[], None]
    closed: bool = False

    async def deltas(self) -> AsyncIterator[GenerationDelta]:
        """All deltas, the first included; closes the engine stream however it ends."""
        try:
            yield self.first
            if self.first.finish_reason is None:
                async for delta in self.rest:
                    yield delta
                    if delta.finish_reason is not None:
                        break
        finally:
            await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await close_quietly(self.rest)
        self.on_finished()


async def tokenize(tokenize: Callable[[], list[int]], characters: int) -> list[int]:
    if characters <= INLINE_TOKENIZE_CHARS:
        return tokenize()
    return await asyncio.to_thread(tokenize)


def max_tokens(
    engine: GenerationEngine, prompt_tokens: int, fields: SamplingFields, prompt_param: str
) -> int:
    """What the request may generate: what it asked for, or what the context has room for."""
    requested = fields.requested_max_tokens
    context = engine.context_length
    room = context - prompt_tokens
    if room < 1:
        raise invalid(
            prompt_param,
            f"The prompt is {prompt_tokens} tokens; this model's context is {context} tokens, "
            "which leaves no room to generate.",
            code="context_length_exceeded",
        )
    if requested is None:
        return room
    if requested > room:
        field = fields.max_tokens_field
        raise invalid(
            field,
            f"This model's context is {context} tokens; the prompt is {prompt_tokens} tokens, "
            f"so {field} may be at most {room} (got {requested}).",
            code="context_length_exceeded",
        )
    return requested


async def submit(
    admission: Admission,
    raw: Request,
    served: tuple[GenerationEngine, str],
    fields: SamplingFields,
    prompt_token_ids: list[int],
    *,
    arrival: float,
    endpoint: Endpoint,
) -> Generation:
    """Check the lengths, submit to the `served` (engine, model id), and wait (racing a
    disconnect) for the first delta. `arrival` is when the handler began, so TTFT includes
    tokenizing, as vLLM's does."""
    engine, model = served
    limit = max_tokens(engine, len(prompt_token_ids), fields, endpoint.input_param)
    request = GenerationRequest(
        request_id=f"{endpoint.id_prefix}-{uuid.uuid4().hex}",
        prompt_token_ids=tuple(prompt_token_ids),
        params=fields.sampling_params(limit),
        priority=fields.priority,
        arrival_time=arrival,
        queue_deadline=arrival + admission.limits.queue_timeout_s,
        deadline=arrival + admission.limits.request_timeout_s,
    )
    lifecycle = admission.lifecycle
    lifecycle.generation_started()
    iterator: AsyncIterator[GenerationDelta] | None = None
    try:
        iterator = engine.generate(request)
        first = await until_disconnected(raw.receive, anext(iterator))
    except BaseException as error:
        if iterator is not None:
            await close_quietly(iterator)
        lifecycle.generation_finished()
        if isinstance(error, EngineError):
            raise engine_error(error, endpoint.input_param) from error
        if isinstance(error, StopAsyncIteration):
            raise ApiError(
                500, "The engine ended the stream without a result.", type=ErrorType.SERVER
            ) from error
        raise
    if first.finish_reason is not None and not first.token_ids and not first.text:
        await close_quietly(iterator)
        lifecycle.generation_finished()
        _raise_for_empty_finish(first.finish_reason)
    return Generation(request.request_id, model, first, iterator, lifecycle.generation_finished)


def _raise_for_empty_finish(reason: FinishReason) -> None:
    """A request that ended before producing anything gets a status, not an empty 200."""
    if reason is FinishReason.TIMEOUT:
        raise ApiError(
            504,
            "The request timed out waiting for a batch slot (--queue-timeout-s).",
            type=ErrorType.TIMEOUT,
            code="queue_timeout",
        )
    if reason is FinishReason.ABORT:
        raise unavailable(
            "The request was aborted (the server is shutting down or the engine failed).",
            DRAINING_RETRY_AFTER_S,
            "aborted",
        )


async def collect(raw: Request, generation: Generation) -> tuple[str, GenerationDelta]:
    """The whole text and the last delta (its finish reason and token counts)."""

    async def consume() -> tuple[str, GenerationDelta]:
        parts: list[str] = []
        last = generation.first
        deltas = generation.deltas()
        try:
            async for delta in deltas:
                parts.append(delta.text)
                last = delta
        finally:
            await close_quietly(deltas)
        return "".join(parts), last

    try:
        return await until_disconnected(raw.receive, consume())
    finally:
        await generation.close()


async def respond(
    raw: Request,
    generation: Generation,
    fields: SamplingFields,
    events: Callable[[Generation, bool], AsyncIterator[bytes]],
    response: Callable[[Generation, str, GenerationDelta], BaseModel],
) -> Response:
    """Stream the generation's `events`, or collect it into `response(generation, text, last)`."""
    headers = {"X-Request-Id": generation.request_id}
    if fields.stream:
        stream = events(generation, fields.include_usage)
        return EventStreamResponse(stream, on_close=generation.close, headers=headers)
    text, last = await collect(raw, generation)
    return JSONResponse(response(generation, text, last).model_dump(), headers=headers)


def usage(delta: GenerationDelta) -> Usage:
    return Usage(
        prompt_tokens=delta.prompt_tokens,
        completion_tokens=delta.completion_tokens,
        total_tokens=delta.prompt_tokens + delta.completion_tokens,
    )
