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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelplane_server.api_keys import tenant_of
from modelplane_server.engine.contract import (
    EngineError,
    FinishReason,
    GenerationDelta,
    GenerationEngine,
    GenerationRequest,
    TokenLogprob,
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


@dataclass
class Choices:
    """The `n` generations of one request (one unless it asked for more), in choice order."""

    response_id: str
    model: str
    generations: list[Generation]

    async def close(self) -> None:
        for generation in self.generations:
            await generation.close()


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
) -> Choices:
    """Check the lengths, submit the request's `n` choices to the `served` (engine, model id) at
    once (so they share batches), and wait (racing a disconnect) for every first delta. `arrival`
    is when the handler began, so TTFT includes tokenizing, as vLLM's does."""
    engine, model = served
    limit = max_tokens(engine, len(prompt_token_ids), fields, endpoint.input_param)
    params = fields.sampling_params(limit)
    response_id = f"{endpoint.id_prefix}-{uuid.uuid4().hex}"
    requests = [
        GenerationRequest(
            request_id=response_id if fields.n == 1 else f"{response_id}-{index}",
            prompt_token_ids=tuple(prompt_token_ids),
            # A seeded request's choices differ from each other yet repeat from run to run.
            params=params if params.seed is None else replace(params, seed=params.seed + index),
            priority=fields.priority,
            arrival_time=arrival,
            queue_deadline=arrival + admission.limits.queue_timeout_s,
            deadline=arrival + admission.limits.request_timeout_s,
            tenant=tenant_of(raw.scope),
        )
        for index in range(fields.n)
    ]
    lifecycle = admission.lifecycle
    iterators: list[AsyncIterator[GenerationDelta]] = []
    started = 0
    try:
        for request in requests:
            lifecycle.generation_started()
            started += 1
            iterators.append(engine.generate(request))
        firsts = await until_disconnected(raw.receive, _first_deltas(iterators))
    except BaseException as error:
        await _abandon(iterators, started, lifecycle.generation_finished)
        if isinstance(error, EngineError):
            raise engine_error(error, endpoint.input_param, fields.grammar_param) from error
        if isinstance(error, StopAsyncIteration):
            raise ApiError(
                500, "The engine ended the stream without a result.", type=ErrorType.SERVER
            ) from error
        raise
    for first in firsts:
        if first.finish_reason is not None and not first.token_ids and not first.text:
            await _abandon(iterators, started, lifecycle.generation_finished)
            _raise_for_empty_finish(first.finish_reason)
    generations = [
        Generation(request.request_id, model, first, iterator, lifecycle.generation_finished)
        for request, first, iterator in zip(requests, firsts, iterators, strict=True)
    ]
    return Choices(response_id, model, generations)


async def _first_deltas(iterators: list[AsyncIterator[GenerationDelta]]) -> list[GenerationDelta]:
    tasks = [asyncio.ensure_future(anext(iterator)) for iterator in iterators]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def _abandon(
    iterators: list[AsyncIterator[GenerationDelta]], started: int, finished: Callable[[], None]
) -> None:
    for iterator in iterators:
        await close_quietly(iterator)
    for _ in range(started):
        finished()


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


@dataclass(frozen=True)
class Collected:
    """One choice, whole: its text, its last delta (finish reason, token counts) and, when asked
    for, its tokens' logprobs."""

    text: str
    last: GenerationDelta
    logprobs: tuple[TokenLogprob, ...]


async def collect(raw: Request, choices: Choices) -> list[Collected]:
    """Each choice, whole, in choice order."""

    async def consume(generation: Generation) -> Collected:
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        last = generation.first
        deltas = generation.deltas()
        try:
            async for delta in deltas:
                parts.append(delta.text)
                logprobs.extend(delta.logprobs)
                last = delta
        finally:
            await close_quietly(deltas)
        return Collected("".join(parts), last, tuple(logprobs))

    async def consume_all() -> list[Collected]:
        return list(await asyncio.gather(*(consume(g) for g in choices.generations)))

    try:
        return await until_disconnected(raw.receive, consume_all())
    finally:
        await choices.close()


async def respond(
    raw: Request,
    choices: Choices,
    fields: SamplingFields,
    events: Callable[[Choices, bool], AsyncIterator[bytes]],
    response: Callable[[Choices, list[Collected]], BaseModel],
) -> Response:
    """Stream the choices' `events`, or collect them into `response(choices, results)`."""
    headers = {"X-Request-Id": choices.response_id}
    if fields.stream:
        stream = events(choices, fields.include_usage)
        return EventStreamResponse(stream, on_close=choices.close, headers=headers)
    results = await collect(raw, choices)
    return JSONResponse(response(choices, results).model_dump(), headers=headers)


def usage(lasts: Sequence[GenerationDelta]) -> Usage:
    """The prompt once (the choices share it), and every choice's completion tokens."""
    prompt_tokens = lasts[0].prompt_tokens
    completion_tokens = sum(last.completion_tokens for last in lasts)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
