"""The ASGI application: routes, error mapping and middleware.

`create_app` wires the pieces; the routes are thin (they hand the validated request to the OpenAI
endpoint functions and return what they return). `ServerState` (`lifecycle`) loads, starts and
drains the engines. Nothing here imports torch: the loader does, lazily.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from modelplane_server.http.auth import ApiKeyMiddleware
from modelplane_server.http.errors import (
    ApiError,
    ErrorResponse,
    handle_api_error,
    handle_http_exception,
    handle_validation_error,
)
from modelplane_server.http.health import ProbeResult
from modelplane_server.http.lifecycle import Loader, ServerState
from modelplane_server.http.middleware import ObservingMiddleware
from modelplane_server.http.stats import server_stats
from modelplane_server.http.streaming import ClientDisconnectedError
from modelplane_server.metrics import CONTENT_TYPE
from modelplane_server.openai.chat import create_chat_completion
from modelplane_server.openai.completions import create_completion
from modelplane_server.openai.embeddings import create_embeddings
from modelplane_server.openai.embeddings import similarity as embeddings_similarity
from modelplane_server.openai.models import model_list
from modelplane_server.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelList,
    SimilarityRequest,
    SimilarityResponse,
)
from modelplane_server.settings import ServerSettings

logger = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away", for logs and metrics


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "invalid request (`param` names the field)",
        401: "missing or invalid API key",
        404: "unknown model",
        429: "queue full; see Retry-After",
        503: "loading or draining; see Retry-After",
        504: "timed out waiting for a batch slot",
    }.items()
}


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    # Nobody is listening; the status only shows in the access log and the HTTP metrics.
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def _probe(result: ProbeResult) -> JSONResponse:
    body = {"status": result.status, **({"detail": result.detail} if result.detail else {})}
    return JSONResponse(body, status_code=result.status_code)


def _routes(state: ServerState) -> APIRouter:
    admission = state.admission
    router = APIRouter()
    sse = {"text/event-stream": {"description": "with stream=true: `data: {chunk}` ... `[DONE]`"}}

    @router.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses={**ERROR_RESPONSES, 200: {"content": sse}},
        tags=["openai"],
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(admission, body, request)

    @router.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses={**ERROR_RESPONSES, 200: {"content": sse}},
        tags=["openai"],
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(admission, body, request)

    @router.post("/v1/embeddings", responses=ERROR_RESPONSES, tags=["openai"])
    async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingResponse:
        return await create_embeddings(admission, body, request)

    @router.post("/v1/similarity", responses=ERROR_RESPONSES, tags=["modelplane"])
    async def similarity(body: SimilarityRequest, request: Request) -> SimilarityResponse:
        return await embeddings_similarity(admission, body, request)

    @router.get("/v1/models", tags=["openai"])
    async def models() -> ModelList:
        return model_list(admission)

    @router.get("/health/live", tags=["health"])
    async def live() -> JSONResponse:
        engines = admission.engines
        return _probe(
            state.lifecycle.liveness(None if engines is None else engines.generation.stats())
        )

    @router.get("/health/ready", tags=["health"])
    async def ready() -> JSONResponse:
        return _probe(state.lifecycle.readiness())

    @router.get("/health/startup", tags=["health"])
    async def startup() -> JSONResponse:
        return _probe(state.lifecycle.startup())

    @router.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)

    @router.get("/stats", tags=["health"])
    async def stats() -> dict[str, Any]:
        return server_stats(admission, state.http_in_flight)

    return router


def create_app(settings: ServerSettings, loader: Loader | None = None) -> FastAPI:
    """The app for `settings`; `loader` builds the engines (default: the real ones, which import
    torch; tests pass fakes)."""
    if loader is None:
        from modelplane_server.bootstrap import load_engines

        loader = load_engines
    state = ServerState(settings, loader)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.start_loading()
        try:
            yield
        finally:
            await state.drain()

    app = FastAPI(
        title="Modelplane server",
        summary="OpenAI-compatible generation and embeddings with continuous batching.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.server = state
    app.include_router(_routes(state))
    app.add_exception_handler(ApiError, handle_api_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(ClientDisconnectedError, _client_gone)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys().keys)
    app.add_middleware(ObservingMiddleware, state=state)  # added last: outermost
    return app
