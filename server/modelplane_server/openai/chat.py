"""`POST /v1/chat/completions`: messages (and tools) through the model's chat template, collected or
streamed as `chat.completion.chunk`s; with tools offered, calls in the output become `tool_calls`
(`tools.py`) and the finish reason `tool_calls`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from modelplane_server.api_keys import tenant_of
from modelplane_server.engine.contract import FinishReason, GenerationDelta
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
    ToolCallDelta,
)
from modelplane_server.openai.sse import chunk_event, stream_events
from modelplane_server.openai.tools import (
    ToolCallStream,
    parse_output,
    template_messages,
    template_tools,
)

ENDPOINT = Endpoint(id_prefix="chatcmpl", input_param="messages")


async def create_chat_completion(
    admission: Admission, body: ChatCompletionRequest, raw: Request
) -> Response:
    arrival = time.monotonic()
    engine, model = admission.generation_engine(body.model, tenant_of(raw.scope))
    body.forced_tools()  # a tool_choice the tools cannot honour is a 400 before any work
    offered = body.offered_tools()
    renders_tools = engine.chat_template_renders_tools
    try:
        messages = template_messages(body.messages, offered, renders_tools)
        prompt_ids = await tokenize(
            partial(
                engine.apply_chat_template,
                messages,
                template_tools(offered) if offered and renders_tools else None,
            ),
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
    tool_names = frozenset(tool.function.name for tool in offered)
    return await respond(
        raw,
        choices,
        body,
        partial(chat_events, logprobs=logprobs, tool_names=tool_names),
        partial(_response, logprobs=logprobs, tool_names=tool_names),
    )


def _response(
    choices: Choices,
    results: list[Collected],
    logprobs: bool = False,
    tool_names: frozenset[str] = frozenset(),
) -> ChatCompletionResponse:
    def choice(index: int, result: Collected) -> ChatChoice:
        finish = str(result.last.finish_reason)
        message = AssistantMessage(content=result.text)
        if tool_names:
            parsed = parse_output(result.text, tool_names)
            if parsed.tool_calls:
                message = AssistantMessage(content=parsed.content, tool_calls=parsed.tool_calls)
                finish = _tool_calls_finish(finish)
        return ChatChoice(
            index=index,
            message=message,
            logprobs=chat_logprobs(result.logprobs) if logprobs else None,
            finish_reason=finish,
        )

    return ChatCompletionResponse(
        id=choices.response_id,
        created=int(time.time()),
        model=choices.model,
        choices=[choice(index, result) for index, result in enumerate(results)],
        usage=usage([result.last for result in results]),
    )


def _tool_calls_finish(finish: str) -> str:
    """OpenAI's reason for an answer that calls tools; a call cut short keeps `length`."""
    return "tool_calls" if finish == str(FinishReason.STOP) else finish


def _is_template_refusal(error: Exception) -> bool:
    """Chat templates refuse conversations they cannot render (Llama 2's "roles must alternate")
    with jinja2's `raise_exception`; that is the client's 400, unlike a bug in our code."""
    return type(error).__module__.startswith("jinja2") or isinstance(
        error, (ValueError, KeyError, TypeError)
    )


async def chat_events(
    choices: Choices,
    include_usage: bool,
    logprobs: bool = False,
    tool_names: frozenset[str] = frozenset(),
) -> AsyncIterator[bytes]:
    """For each choice a first chunk with the assistant's role, then one per text delta (or per
    tool-call delta) and one for the finish."""
    created = int(time.time())
    splitters = [ToolCallStream(tool_names) if tool_names else None for _ in choices.generations]

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
        text, splitter = delta.text, splitters[index]
        calls: list[ToolCallDelta] = []
        if splitter is not None:
            text, calls = splitter.feed(delta.text, delta.finish_reason is not None)
        if text or (logprobs and delta.logprobs):
            content = ChatDelta(content=text)
            entries = chat_logprobs(delta.logprobs) if logprobs else None
            events.append(chunk([ChatChunkChoice(index=index, delta=content, logprobs=entries)]))
        events.extend(
            chunk([ChatChunkChoice(index=index, delta=ChatDelta(tool_calls=[call]))])
            for call in calls
        )
        if delta.finish_reason is not None:
            finish = str(delta.finish_reason)
            if splitter is not None and splitter.calls:
                finish = _tool_calls_finish(finish)
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
