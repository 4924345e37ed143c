"""`POST /v1/completions`: one text prompt, collected or streamed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from modelplane_server.api_keys import tenant_of
from modelplane_server.engine.contract import GenerationDelta
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
from modelplane_server.openai.logprobs import completion_logprobs
from modelplane_server.openai.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
)
from modelplane_server.openai.sse import chunk_event, stream_events

ENDPOINT = Endpoint(id_prefix="cmpl", input_param="prompt")


async def create_completion(
    admission: Admission, body: CompletionRequest, raw: Request
) -> Response:
    arrival = time.monotonic()
    engine, model = admission.generation_engine(body.model, tenant_of(raw.scope))
    prompt = body.prompt_input()
    if isinstance(prompt, str):
        prompt_ids = await tokenize(partial(engine.encode, prompt), len(prompt))
    else:
        prompt_ids = prompt
    choices = await submit(
        admission, raw, (engine, model), body, prompt_ids, arrival=arrival, endpoint=ENDPOINT
    )
    echo = prompt if body.echo and isinstance(prompt, str) else ""
    return await respond(
        raw,
        choices,
        body,
        partial(completion_events, echo=echo, logprobs=body.logprobs is not None),
        partial(_response, echo=echo, logprobs=body.logprobs is not None),
    )


def _response(
    choices: Choices, results: list[Collected], echo: str = "", logprobs: bool = False
) -> CompletionResponse:
    return CompletionResponse(
        id=choices.response_id,
        created=int(time.time()),
        model=choices.model,
        choices=[
            CompletionChoice(
                index=index,
                text=echo + result.text,
                logprobs=completion_logprobs(result.logprobs, len(echo)) if logprobs else None,
                finish_reason=str(result.last.finish_reason),
            )
            for index, result in enumerate(results)
        ],
        usage=usage([result.last for result in results]),
    )


def completion_events(
    choices: Choices, include_usage: bool, echo: str = "", logprobs: bool = False
) -> AsyncIterator[bytes]:
    """OpenAI streams completions as `text_completion` objects, one choice delta each; `echo`
    (the prompt, with `echo=true`) comes first, with each choice's first delta."""
    created = int(time.time())
    pending_echo = [echo] * len(choices.generations)
    text_offsets = [0] * len(choices.generations)

    def chunk(
        parts: list[CompletionChoice], lasts: list[GenerationDelta] | None = None
    ) -> CompletionResponse:
        return CompletionResponse(
            id=choices.response_id,
            created=created,
            model=choices.model,
            choices=parts,
            usage=None if lasts is None else usage(lasts),
        )

    def chunks(index: int, delta: GenerationDelta) -> list[bytes]:
        text, pending_echo[index] = pending_echo[index] + delta.text, ""
        if not text and delta.finish_reason is None:
            return []
        finish = None if delta.finish_reason is None else str(delta.finish_reason)
        offset = text_offsets[index] + len(text) - len(delta.text)
        text_offsets[index] += len(text)
        choice = CompletionChoice(
            index=index,
            text=text,
            logprobs=completion_logprobs(delta.logprobs, offset) if logprobs else None,
            finish_reason=finish,
        )
        return [chunk_event(chunk([choice]), include_usage)]

    def usage_chunk(lasts: list[GenerationDelta]) -> bytes:
        return chunk_event(chunk([], lasts), include_usage=True)

    return stream_events(choices, chunks, usage_chunk if include_usage else None)
