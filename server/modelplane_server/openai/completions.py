"""`POST /v1/completions`: one text prompt, collected or streamed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from modelplane_server.engine.contract import GenerationDelta
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
    engine, model = admission.generation_engine(body.model)
    prompt = body.prompt_input()
    if isinstance(prompt, str):
        prompt_ids = await tokenize(partial(engine.encode, prompt), len(prompt))
    else:
        prompt_ids = prompt
    generation = await submit(
        admission, raw, (engine, model), body, prompt_ids, arrival=arrival, endpoint=ENDPOINT
    )
    echo = prompt if body.echo and isinstance(prompt, str) else ""
    return await respond(
        raw,
        generation,
        body,
        partial(completion_events, echo=echo),
        partial(_response, echo=echo),
    )


def _response(
    generation: Generation, text: str, last: GenerationDelta, echo: str = ""
) -> CompletionResponse:
    return CompletionResponse(
        id=generation.request_id,
        created=int(time.time()),
        model=generation.model,
        choices=[CompletionChoice(text=echo + text, finish_reason=str(last.finish_reason))],
        usage=usage(last),
    )


def completion_events(
    generation: Generation, include_usage: bool, echo: str = ""
) -> AsyncIterator[bytes]:
    """OpenAI streams completions as `text_completion` objects, one choice delta each; `echo`
    (the prompt, with `echo=true`) comes first, with the first delta."""
    created = int(time.time())
    pending_echo = [echo]

    def chunk(
        choices: list[CompletionChoice], usage_: GenerationDelta | None = None
    ) -> CompletionResponse:
        return CompletionResponse(
            id=generation.request_id,
            created=created,
            model=generation.model,
            choices=choices,
            usage=None if usage_ is None else usage(usage_),
        )

    def chunks(delta: GenerationDelta) -> list[bytes]:
        text = pending_echo.pop() + delta.text if pending_echo else delta.text
        if not text and delta.finish_reason is None:
            return []
        finish = None if delta.finish_reason is None else str(delta.finish_reason)
        choice = CompletionChoice(text=text, finish_reason=finish)
        return [chunk_event(chunk([choice]), include_usage)]

    def usage_chunk(last: GenerationDelta) -> bytes:
        return chunk_event(chunk([], last), include_usage=True)

    return stream_events(generation, chunks, usage_chunk if include_usage else None)
