"""`POST /v1/chat/completions`: messages through the model's chat template, collected or
streamed as `chat.completion.chunk`s."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from modelplane_server.engine.contract import GenerationDelta
from modelplane_server.http.errors import invalid
from modelplane_server.openai.admission import Admission
from modelplane_server.openai.generation import (
    Endpoint,
    Generation,
    respond,
    submit,
    tokenize,
    usage,
)
from modelplane_server.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
)
from modelplane_server.openai.sse import chunk_event, stream_events

ENDPOINT = Endpoint(id_prefix="chatcmpl", input_param="messages")


async def create_chat_completion(
    admission: Admission, body: ChatCompletionRequest, raw: Request
) -> Response:
    arrival = time.monotonic()
    engine, model = admission.generation_engine(body.model)
    try:
        messages = body.template_messages()
        prompt_ids = await tokenize(
            partial(engine.apply_chat_template, messages),
            sum(len(message["content"]) for message in messages),
        )
    except Exception as error:
        if not _is_template_refusal(error):
            raise
        raise invalid("messages", f"The chat template rejected the messages: {error}") from error
    generation = await submit(
        admission, raw, (engine, model), body, prompt_ids, arrival=arrival, endpoint=ENDPOINT
    )
    return await respond(raw, generation, body, chat_events, _response)


def _response(generation: Generation, text: str, last: GenerationDelta) -> ChatCompletionResponse:
    message = AssistantMessage(content=text)
    return ChatCompletionResponse(
        id=generation.request_id,
        created=int(time.time()),
        model=generation.model,
        choices=[ChatChoice(message=message, finish_reason=str(last.finish_reason))],
        usage=usage(last),
    )


def _is_template_refusal(error: Exception) -> bool:
    """Chat templates refuse conversations they cannot render (Llama 2's "roles must alternate")
    with jinja2's `raise_exception`; that is the client's 400, unlike a bug in our code."""
    return type(error).__module__.startswith("jinja2") or isinstance(
        error, (ValueError, KeyError, TypeError)
    )


async def chat_events(generation: Generation, include_usage: bool) -> AsyncIterator[bytes]:
    """A first chunk with the assistant's role, then one per text delta and one for the finish."""
    created = int(time.time())

    def chunk(choices: list[ChatChunkChoice], last: GenerationDelta | None = None) -> bytes:
        body = ChatCompletionChunk(
            id=generation.request_id,
            created=created,
            model=generation.model,
            choices=choices,
            usage=None if last is None else usage(last),
        )
        return chunk_event(body, include_usage)

    def chunks(delta: GenerationDelta) -> list[bytes]:
        events = []
        if delta.text:
            events.append(chunk([ChatChunkChoice(delta=ChatDelta(content=delta.text))]))
        if delta.finish_reason is not None:
            finish = str(delta.finish_reason)
            events.append(chunk([ChatChunkChoice(delta=ChatDelta(), finish_reason=finish)]))
        return events

    yield chunk([ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))])
    usage_chunk = (lambda last: chunk([], last)) if include_usage else None
    async with contextlib.aclosing(stream_events(generation, chunks, usage_chunk)) as events:
        async for item in events:
            yield item
