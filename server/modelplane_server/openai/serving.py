"""The OpenAI endpoints' logic between the protocol models and the engines.

For generation: check that the server admits work and that the model is ours, tokenize (the chat
template for chat), check the prompt and `max_tokens` against the context, submit a
`GenerationRequest` with its queue and total deadlines, then either collect the deltas or stream
them as SSE chunks. The first delta is awaited before the response starts, so a request refused or
timed out in the queue still gets a proper status code instead of a 200 stream with an error. Every
await on the engine races the client's disconnect, and every exit path closes the engine iterator,
which frees the batch slot. Engine errors map to statuses here and only here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelplane_server.engine.contract import (
    EmbeddingEngine,
    EngineError,
    FinishReason,
    GenerationDelta,
    GenerationEngine,
    GenerationRequest,
    InvalidRequestError,
    NotAcceptingError,
    PromptTooLongError,
    QueueFullError,
)
from modelplane_server.http.errors import ApiError, ErrorType, invalid, retry_after, unavailable
from modelplane_server.http.health import Lifecycle
from modelplane_server.http.streaming import (
    EventStreamResponse,
    close_quietly,
    until_disconnected,
)
from modelplane_server.metrics import Metrics
from modelplane_server.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    SamplingFields,
    SimilarityRequest,
    SimilarityResponse,
    Usage,
)

logger = logging.getLogger(__name__)

LOADING_RETRY_AFTER_S = 10.0
# Tokenizing runs ~5 MB/s: longer texts go to a worker thread so the event loop (and with it every
# other request and the probes) never stalls behind one big prompt.
INLINE_TOKENIZE_CHARS = 16_384
DRAINING_RETRY_AFTER_S = 1.0  # another replica can take it at once
DONE_EVENT = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Engines:
    """What the server serves once loading has finished."""

    generation: GenerationEngine
    embedding: EmbeddingEngine | None
    generation_model_id: str


@dataclass(frozen=True)
class Limits:
    queue_timeout_s: float
    request_timeout_s: float


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def engine_error(error: EngineError, input_param: str = "prompt") -> ApiError:
    """The one place engine admission errors become HTTP statuses; `input_param` names the field
    that held the input (`prompt`, `messages`, `input`)."""
    if isinstance(error, QueueFullError):
        return ApiError(
            429,
            f"The server is at capacity: {error}. Retry later.",
            type=ErrorType.RATE_LIMIT,
            code="queue_full",
            headers=retry_after(error.retry_after_s),
        )
    if isinstance(error, PromptTooLongError):
        return invalid(
            input_param,
            f"{error} (the limit is {error.limit} tokens)",
            code="context_length_exceeded",
        )
    if isinstance(error, InvalidRequestError):
        return invalid(input_param, str(error))
    if isinstance(error, NotAcceptingError):
        return unavailable(f"The server is not accepting work: {error}", 1.0, "not_accepting")
    return ApiError(500, f"The engine failed: {error}", type=ErrorType.SERVER, code="engine_error")


@dataclass
class _Generation:
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


class Serving:
    """The endpoints' logic, shared by the routes; holds the engines once they are loaded."""

    def __init__(self, lifecycle: Lifecycle, metrics: Metrics, limits: Limits) -> None:
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.limits = limits
        self.engines: Engines | None = None

    # --- admission -----------------------------------------------------------------------------

    def _loaded(self) -> Engines:
        if self.lifecycle.draining:
            self.metrics.on_rejected("draining")
            raise unavailable(
                "The server is shutting down; retry on another replica.",
                DRAINING_RETRY_AFTER_S,
                "draining",
            )
        if self.engines is None or not self.lifecycle.accepting:
            self.metrics.on_rejected("not_ready")
            raise unavailable("The model is still loading.", LOADING_RETRY_AFTER_S, "loading")
        return self.engines

    def _generation_engine(self, requested: str | None) -> tuple[GenerationEngine, str]:
        engines = self._loaded()
        served = engines.generation_model_id
        if requested not in (None, "", served):
            embedding = engines.embedding
            hint = (
                f" ('{requested}' is an embedding model)"
                if embedding is not None and requested == embedding.model_id
                else ""
            )
            raise ApiError(
                404,
                f"The model '{requested}' does not exist{hint}; this server generates with "
                f"'{served}'.",
                type=ErrorType.NOT_FOUND,
                param="model",
                code="model_not_found",
            )
        return engines.generation, served

    def _embedding_engine(self, requested: str | None) -> EmbeddingEngine:
        engines = self._loaded()
        engine = engines.embedding
        if engine is None:
            raise ApiError(
                404,
                "Embeddings are disabled on this server (--embedding-model=none).",
                type=ErrorType.NOT_FOUND,
                param="model",
                code="model_not_found",
            )
        if requested not in (None, "", engine.model_id):
            raise ApiError(
                404,
                f"The model '{requested}' does not exist; this server embeds with "
                f"'{engine.model_id}'.",
                type=ErrorType.NOT_FOUND,
                param="model",
                code="model_not_found",
            )
        return engine

    def _max_tokens(
        self,
        engine: GenerationEngine,
        prompt_tokens: int,
        fields: SamplingFields,
        prompt_param: str,
    ) -> int:
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

    async def _submit(
        self,
        raw: Request,
        *,
        engine: GenerationEngine,
        model: str,
        fields: SamplingFields,
        prompt_token_ids: list[int],
        arrival: float,
        id_prefix: str,
        input_param: str,
    ) -> _Generation:
        """Check the lengths, submit, and wait (racing a disconnect) for the first delta.
        `arrival` is when the handler began, so TTFT includes tokenizing, as vLLM's does."""
        max_tokens = self._max_tokens(engine, len(prompt_token_ids), fields, input_param)
        request = GenerationRequest(
            request_id=f"{id_prefix}-{uuid.uuid4().hex}",
            prompt_token_ids=tuple(prompt_token_ids),
            params=fields.sampling_params(max_tokens),
            priority=fields.priority,
            arrival_time=arrival,
            queue_deadline=arrival + self.limits.queue_timeout_s,
            deadline=arrival + self.limits.request_timeout_s,
        )
        self.lifecycle.generation_started()
        iterator: AsyncIterator[GenerationDelta] | None = None
        try:
            iterator = engine.generate(request)
            first = await until_disconnected(raw.receive, anext(iterator))
        except BaseException as error:
            if iterator is not None:
                await close_quietly(iterator)
            self.lifecycle.generation_finished()
            if isinstance(error, EngineError):
                raise engine_error(error, input_param) from error
            if isinstance(error, StopAsyncIteration):
                raise ApiError(
                    500, "The engine ended the stream without a result.", type=ErrorType.SERVER
                ) from error
            raise
        if first.finish_reason is not None and not first.token_ids and not first.text:
            await close_quietly(iterator)
            self.lifecycle.generation_finished()
            _raise_for_empty_finish(first.finish_reason)
        return _Generation(
            request.request_id, model, first, iterator, self.lifecycle.generation_finished
        )

    # --- completions ---------------------------------------------------------------------------

    async def completion(self, body: CompletionRequest, raw: Request) -> Response:
        arrival = time.monotonic()
        engine, model = self._generation_engine(body.model)
        prompt = body.prompt_text()
        generation = await self._submit(
            raw,
            engine=engine,
            model=model,
            fields=body,
            prompt_token_ids=await _tokenize(partial(engine.encode, prompt), len(prompt)),
            arrival=arrival,
            id_prefix="cmpl",
            input_param="prompt",
        )
        headers = {"X-Request-Id": generation.request_id}
        if body.stream:
            events = _completion_events(generation, body.include_usage)
            return EventStreamResponse(events, on_close=generation.close, headers=headers)
        text, last = await _collect(raw, generation)
        response = CompletionResponse(
            id=generation.request_id,
            created=int(time.time()),
            model=model,
            choices=[CompletionChoice(text=text, finish_reason=str(last.finish_reason))],
            usage=_usage(last),
        )
        return JSONResponse(response.model_dump(), headers=headers)

    async def chat(self, body: ChatCompletionRequest, raw: Request) -> Response:
        arrival = time.monotonic()
        engine, model = self._generation_engine(body.model)
        try:
            messages = body.template_messages()
            prompt_ids = await _tokenize(
                partial(engine.apply_chat_template, messages),
                sum(len(message["content"]) for message in messages),
            )
        except Exception as error:
            if not _is_template_refusal(error):
                raise
            raise invalid(
                "messages", f"The chat template rejected the messages: {error}"
            ) from error
        generation = await self._submit(
            raw,
            engine=engine,
            model=model,
            fields=body,
            prompt_token_ids=prompt_ids,
            arrival=arrival,
            id_prefix="chatcmpl",
            input_param="messages",
        )
        headers = {"X-Request-Id": generation.request_id}
        if body.stream:
            events = _chat_events(generation, body.include_usage)
            return EventStreamResponse(events, on_close=generation.close, headers=headers)
        text, last = await _collect(raw, generation)
        response = ChatCompletionResponse(
            id=generation.request_id,
            created=int(time.time()),
            model=model,
            choices=[
                ChatChoice(
                    message=AssistantMessage(content=text), finish_reason=str(last.finish_reason)
                )
            ],
            usage=_usage(last),
        )
        return JSONResponse(response.model_dump(), headers=headers)

    # --- embeddings ----------------------------------------------------------------------------

    async def _embed(
        self, raw: Request, engine: EmbeddingEngine, texts: Sequence[str], input_param: str
    ) -> tuple[list[list[float]], int]:
        try:
            return await until_disconnected(raw.receive, engine.embed(texts))
        except EngineError as error:
            raise engine_error(error, input_param) from error

    async def embeddings(self, body: EmbeddingRequest, raw: Request) -> EmbeddingResponse:
        engine = self._embedding_engine(body.model)
        texts = body.texts()
        if body.dimensions is not None and body.dimensions != engine.dimensions:
            raise invalid(
                "dimensions",
                f"This model's embeddings have {engine.dimensions} dimensions; "
                f"got dimensions={body.dimensions}.",
            )
        vectors, tokens = await self._embed(raw, engine, texts, "input")
        encode = _base64_floats if body.encoding_format == "base64" else list
        return EmbeddingResponse(
            data=[Embedding(index=i, embedding=encode(v)) for i, v in enumerate(vectors)],
            model=engine.model_id,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def similarity(self, body: SimilarityRequest, raw: Request) -> SimilarityResponse:
        engine = self._embedding_engine(body.model)
        queries = body.queries if body.queries is not None else body.texts
        unique = list(dict.fromkeys([*queries, *body.texts]))
        vectors, tokens = await self._embed(raw, engine, unique, "texts")
        matrix = cosine_matrix(
            [vectors[unique.index(q)] for q in queries],
            [vectors[unique.index(t)] for t in body.texts],
        )
        return SimilarityResponse(
            model=engine.model_id,
            matrix=matrix,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    # --- models and stats ----------------------------------------------------------------------

    def models(self) -> ModelList:
        engines = self.engines
        if engines is None:
            return ModelList(data=[])
        created = int(time.time() - (self.lifecycle.monotonic() - self.lifecycle.started_at))
        cards = [
            ModelCard(
                id=engines.generation_model_id,
                created=created,
                max_model_len=engines.generation.context_length,
                kind="generation",
            )
        ]
        if engines.embedding is not None:
            cards.append(
                ModelCard(
                    id=engines.embedding.model_id,
                    created=created,
                    max_model_len=engines.embedding.context_length,
                    kind="embedding",
                )
            )
        return ModelList(data=cards)

    def stats(self, http_in_flight: int) -> dict[str, Any]:
        lifecycle = self.lifecycle
        now = lifecycle.monotonic()
        result: dict[str, Any] = {
            "phase": lifecycle.phase.value,
            "uptime_s": round(now - lifecycle.started_at, 3),
            "http_requests_in_flight": http_in_flight,
            "finished_requests": self.metrics.finished_counts(),
            "rejected_requests": self.metrics.rejected_counts(),
            "generation": None,
            "embedding": None,
        }
        engines = self.engines
        if engines is None:
            return result
        stats = engines.generation.stats()
        recent = list(stats.recent_batch_sizes)
        result["generation"] = {
            "model": engines.generation_model_id,
            "context_length": engines.generation.context_length,
            "waiting": stats.waiting,
            "running": stats.running,
            "waiting_prompt_tokens": stats.waiting_prompt_tokens,
            "steps_total": stats.steps_total,
            "seconds_since_last_step": (
                None
                if stats.last_step_monotonic is None
                else round(now - stats.last_step_monotonic, 3)
            ),
            "max_batch_size": stats.max_batch_size,
            "recent_batch_sizes": recent,
            "mean_recent_batch_size": round(sum(recent) / len(recent), 2) if recent else None,
        }
        if engines.embedding is not None:
            result["embedding"] = {
                "model": engines.embedding.model_id,
                "dimensions": engines.embedding.dimensions,
                "context_length": engines.embedding.context_length,
            }
        return result


async def _tokenize(tokenize: Callable[[], list[int]], characters: int) -> list[int]:
    if characters <= INLINE_TOKENIZE_CHARS:
        return tokenize()
    return await asyncio.to_thread(tokenize)


def _is_template_refusal(error: Exception) -> bool:
    """Chat templates refuse conversations they cannot render (Llama 2's "roles must alternate")
    with jinja2's `raise_exception`; that is the client's 400, unlike a bug in our code."""
    return type(error).__module__.startswith("jinja2") or isinstance(
        error, (ValueError, KeyError, TypeError)
    )


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


async def _collect(raw: Request, generation: _Generation) -> tuple[str, GenerationDelta]:
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


def _usage(delta: GenerationDelta) -> Usage:
    return Usage(
        prompt_tokens=delta.prompt_tokens,
        completion_tokens=delta.completion_tokens,
        total_tokens=delta.prompt_tokens + delta.completion_tokens,
    )


def _error_event(error: Exception) -> bytes:
    logger.exception("a generation stream failed", exc_info=error)
    api_error = error if isinstance(error, ApiError) else None
    body = (api_error or ApiError(500, "The generation failed.", type=ErrorType.SERVER)).body()
    return _sse(body.model_dump())


async def _completion_events(generation: _Generation, include_usage: bool) -> AsyncIterator[bytes]:
    created = int(time.time())
    base = {"id": generation.request_id, "object": "text_completion", "created": created,
            "model": generation.model}  # fmt: skip
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    last = generation.first
    deltas = generation.deltas()
    try:
        async for delta in deltas:
            last = delta
            if delta.text or delta.finish_reason is not None:
                finish = None if delta.finish_reason is None else str(delta.finish_reason)
                choice = {"index": 0, "text": delta.text, "logprobs": None, "finish_reason": finish}
                yield _sse({**base, "choices": [choice], **extra})
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(last).model_dump()})
    except Exception as error:  # the headers are sent: report in-band, then end the stream
        yield _error_event(error)
    finally:
        await close_quietly(deltas)
    yield DONE_EVENT


async def _chat_events(generation: _Generation, include_usage: bool) -> AsyncIterator[bytes]:
    created = int(time.time())
    base = {"id": generation.request_id, "object": "chat.completion.chunk", "created": created,
            "model": generation.model}  # fmt: skip
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**base, "choices": [choice], **extra})

    yield chunk({"role": "assistant", "content": ""})
    last = generation.first
    deltas = generation.deltas()
    try:
        async for delta in deltas:
            last = delta
            if delta.text:
                yield chunk({"content": delta.text})
            if delta.finish_reason is not None:
                yield chunk({}, str(delta.finish_reason))
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(last).model_dump()})
    except Exception as error:
        yield _error_event(error)
    finally:
        await close_quietly(deltas)
    yield DONE_EVENT


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's `encoding_format=base64`: little-endian float32s, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def cosine_matrix(rows: list[list[float]], columns: list[list[float]]) -> list[list[float]]:
    """Cosine similarity of every row vector with every column vector."""
    import numpy as np  # lazily: only this endpoint needs it

    left = np.asarray(rows, dtype=np.float64)
    right = np.asarray(columns, dtype=np.float64)
    left /= np.maximum(np.linalg.norm(left, axis=1, keepdims=True), 1e-12)
    right /= np.maximum(np.linalg.norm(right, axis=1, keepdims=True), 1e-12)
    similarity: list[list[float]] = np.clip(left @ right.T, -1.0, 1.0).tolist()
    return similarity
