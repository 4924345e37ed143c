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
    Choices,
    Collected,
    Endpoint,
    respond,
    submit,
    tokenize,
    usage,
)
from modelplane_server.openai.logprobs import chat_logprobs
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
    choices = await submit(
        admission, raw, (engine, model), body, prompt_ids, arrival=arrival, endpoint=ENDPOINT
    )
    logprobs = bool(body.logprobs)
    return await respond(
        raw,
        choices,
        body,
        partial(chat_events, logprobs=logprobs),
        partial(_response, logprobs=logprobs),
    )


def _response(
    choices: Choices, results: list[Collected], logprobs: bool = False
) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        id=choices.response_id,
        created=int(time.time()),
        model=choices.model,
        choices=[
            ChatChoice(
                index=index,
                message=AssistantMessage(content=result.text),
                logprobs=chat_logprobs(result.logprobs) if logprobs else None,
                finish_reason=str(result.last.finish_reason),
            )
            for index, result in enumerate(results)
        ],
        usage=usage([result.last for result in results]),
    )


def _is_template_refusal(error: Exception) -> bool:
    """Chat templates refuse conversations they cannot render (Llama 2's "roles must alternate")
    with jinja2's `raise_exception`; that is the client's 400, unlike a bug in our code."""
    return type(error).__module__.startswith("jinja2") or isinstance(
        error, (ValueError, KeyError, TypeError)
    )


async def chat_events(
    choices: Choices, include_usage: bool, logprobs: bool = False
) -> AsyncIterator[bytes]:
    """For each choice a first chunk with the assistant's role, then one per text delta and one
    for the finish."""
    created = int(time.time())

    def chunk(parts: list[ChatChunkChoice], lasts: list[GenerationDelta] | None = None) -> bytes:
        body = ChatCompletionChunk(
            id=choices.response_id,
            created=created,
            model=choices.model,
            choices=parts,
            usage=None if lasts is None else usage(lasts),
        )
        return chunk_event(body, include_usage)

    def chunks(index: int, delta: GenerationDelta) -> list[bytes]:
        events = []
        if delta.text or (logprobs and delta.logprobs):
            content = ChatDelta(content=delta.text)
            entries = chat_logprobs(delta.logprobs) if logprobs else None
            events.append(chunk([ChatChunkChoice(index=index, delta=content, logprobs=entries)]))
        if delta.finish_reason is not None:
            finish = str(delta.finish_reason)
            end = ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=finish)
            events.append(chunk([end]))
        return events

    for index in range(len(choices.generations)):
        role = ChatDelta(role="assistant", content="")
        yield chunk([ChatChunkChoice(index=index, delta=role)])
    usage_chunk = (lambda lasts: chunk([], lasts)) if include_usage else None
    async with contextlib.aclosing(stream_events(choices, chunks, usage_chunk)) as events:
        async for item in events:
            yield item
