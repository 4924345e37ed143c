"""The ASGI application: routes, error mapping, middleware, and the server's lifecycle.

`create_app` wires the pieces; the routes are thin (they hand the validated request to `Serving` and
return what it returns). `ServerState` owns the lifecycle: it loads the models on a background
thread after the HTTP server is up (so `/health/startup` can answer 503 meanwhile), starts the
engines, and drains them on SIGTERM or at shutdown. Nothing here imports torch: the loader does,
lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelplane_server.engine.contract import EmbeddingEngine, EngineObserver, GenerationEngine
from modelplane_server.http.auth import ApiKeyMiddleware
from modelplane_server.http.errors import (
    ApiError,
    ErrorResponse,
    handle_api_error,
    handle_http_exception,
    handle_validation_error,
    internal_error,
)
from modelplane_server.http.health import Lifecycle, ProbeResult
from modelplane_server.http.streaming import ClientDisconnectedError
from modelplane_server.metrics import CONTENT_TYPE, Metrics
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
from modelplane_server.openai.serving import Engines, Limits, Serving
from modelplane_server.settings import ServerSettings

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
LoadedEngines = tuple[GenerationEngine, EmbeddingEngine | None]
Loader = Callable[[ServerSettings, EngineObserver, Progress], LoadedEngines]
UNOBSERVED_PREFIXES = ("/health", "/metrics")  # probes and scrapes: not work to drain
HTTP_IDLE_WAIT_S = 5.0
# Bounds what one request can make the event loop parse and tokenize: 2048 embedding inputs of a
# few KiB each fit, a prompt a thousand times any context does not.
MAX_BODY_BYTES = 16 * 1024 * 1024
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away", for logs and metrics


class ServerState:
    """Lifecycle, engines and drain of one app instance (kept on `app.state.server`)."""

    def __init__(self, settings: ServerSettings, loader: Loader) -> None:
        self.settings = settings
        self.loader = loader
        self.lifecycle = Lifecycle(settings.liveness_stall_s)
        self.metrics = Metrics()
        self.metrics.is_ready = lambda: self.lifecycle.accepting
        self.metrics.is_draining = lambda: self.lifecycle.draining
        self.serving = Serving(
            self.lifecycle,
            self.metrics,
            Limits(settings.queue_timeout_s, settings.request_timeout_s),
        )
        self.http_in_flight = 0
        self.on_fatal: Callable[[str], None] | None = None
        self._http_idle = asyncio.Event()
        self._http_idle.set()
        self._load_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._started_engines: list[GenerationEngine | EmbeddingEngine] = []

    # --- loading -------------------------------------------------------------------------------

    def start_loading(self) -> None:
        self._load_task = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        started = time.monotonic()
        try:
            generation, embedding = await _in_daemon_thread(
                lambda: self.loader(self.settings, self.metrics, _log_progress)
            )
            if self.lifecycle.draining:
                return
            await generation.start()
            self._started_engines.append(generation)
            if embedding is not None:
                await embedding.start()
                self._started_engines.append(embedding)
        except Exception as error:
            logger.exception("loading the models failed")
            self.lifecycle.mark_failed(f"loading the models failed: {error}")
            if self.on_fatal is not None:
                self.on_fatal(str(error))
            return
        model_id = self.settings.served_model_name or generation.model_id
        self.serving.engines = Engines(generation, embedding, model_id)
        self.metrics.stats_source = generation.stats
        self.lifecycle.mark_ready()
        logger.info(
            "ready in %.1f s: generating with %s (context %d)%s",
            time.monotonic() - started,
            model_id,
            generation.context_length,
            "" if embedding is None else f", embedding with {embedding.model_id}",
        )

    # --- draining ------------------------------------------------------------------------------

    def drain(self) -> asyncio.Task[None]:
        """Begin draining (idempotent): readiness and new requests get 503 from now on; running
        requests get `--drain-timeout-s` to finish, then the engines end them with `abort`."""
        if self._drain_task is None:
            self.lifecycle.begin_drain()
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        return self._drain_task

    async def _drain(self) -> None:
        timeout = self.settings.drain_timeout_s
        logger.info(
            "draining: %d HTTP requests in flight, up to %g s", self.http_in_flight, timeout
        )
        started = time.monotonic()
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()  # the loading thread is a daemon: it dies with the process
        results = await asyncio.gather(
            *(
                asyncio.wait_for(engine.stop(timeout), timeout + HTTP_IDLE_WAIT_S)
                for engine in self._started_engines
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                logger.error("stopping an engine failed: %r", result)
        # The engines have ended every stream; give the handlers a moment to send the last bytes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._http_idle.wait(), HTTP_IDLE_WAIT_S)
        logger.info(
            "drained in %.1f s (%d HTTP requests still open)",
            time.monotonic() - started,
            self.http_in_flight,
        )

    # --- HTTP bookkeeping ----------------------------------------------------------------------

    def http_started(self) -> None:
        self.http_in_flight += 1
        self._http_idle.clear()

    def http_finished(self) -> None:
        self.http_in_flight -= 1
        if self.http_in_flight == 0:
            self._http_idle.set()


def _log_progress(message: str) -> None:
    logger.info("loading: %s", message)


async def _in_daemon_thread(function: Callable[[], LoadedEngines]) -> LoadedEngines:
    """Run blocking work on a daemon thread: unlike `asyncio.to_thread`, a SIGTERM during a long
    model load need not wait for it to finish."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[LoadedEngines] = loop.create_future()

    def settle(result: LoadedEngines | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)

    def run() -> None:
        try:
            result = function()
        except BaseException as error:  # handed to the event loop, which re-raises it
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="modelplane-load", daemon=True).start()
    return await future


def _too_large() -> StarletteHTTPException:
    return StarletteHTTPException(413, f"The request body exceeds {MAX_BODY_BYTES} bytes.")


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


class ObservingMiddleware:
    """Counts and times every HTTP request by route template, tracks the requests in flight (drain
    waits for them), refuses bodies over `MAX_BODY_BYTES` (413), and turns an unexpected exception
    into an OpenAI-shaped 500 instead of a dropped connection."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False
        path = str(scope["path"])
        observed = not path.startswith(UNOBSERVED_PREFIXES)

        received = 0

        async def receive_bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise _too_large()  # FastAPI re-raises it from its body parsing
            return message

        async def send_observed(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            await send(message)

        if observed:
            self.state.http_started()
        try:
            if _declared_length(scope) > MAX_BODY_BYTES:
                raise _too_large()
            await self.app(scope, receive_bounded, send_observed)
        except StarletteHTTPException as error:  # only ours get this far
            if not response_started:
                response = await handle_http_exception(Request(scope), error)
                await response(scope, receive, send_observed)
        except Exception:
            logger.exception("unhandled error serving %s %s", scope["method"], path)
            if not response_started:
                await internal_error().response()(scope, receive, send_observed)
        finally:
            if observed:
                self.state.http_finished()
            route = scope.get("route")
            template = route.path if isinstance(route, BaseRoute) and hasattr(route, "path") else ""
            self.state.metrics.observe_http(
                template or "unmatched", str(scope["method"]), status, time.perf_counter() - started
            )


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
    serving = state.serving
    router = APIRouter()
    sse = {"text/event-stream": {"description": "with stream=true: `data: {chunk}` ... `[DONE]`"}}

    @router.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses={**ERROR_RESPONSES, 200: {"content": sse}},
        tags=["openai"],
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await serving.completion(body, request)

    @router.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses={**ERROR_RESPONSES, 200: {"content": sse}},
        tags=["openai"],
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await serving.chat(body, request)

    @router.post("/v1/embeddings", responses=ERROR_RESPONSES, tags=["openai"])
    async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingResponse:
        return await serving.embeddings(body, request)

    @router.post("/v1/similarity", responses=ERROR_RESPONSES, tags=["modelplane"])
    async def similarity(body: SimilarityRequest, request: Request) -> SimilarityResponse:
        return await serving.similarity(body, request)

    @router.get("/v1/models", tags=["openai"])
    async def models() -> ModelList:
        return serving.models()

    @router.get("/health/live", tags=["health"])
    async def live() -> JSONResponse:
        engines = serving.engines
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
        return serving.stats(state.http_in_flight)

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
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys())
    app.add_middleware(ObservingMiddleware, state=state)  # added last: outermost
    return app
