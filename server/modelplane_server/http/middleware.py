"""The outermost middleware: HTTP metrics, the in-flight count drain waits for, the body-size
limit, and the last-resort 500."""

from __future__ import annotations

import logging
import time

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelplane_server.http.errors import handle_http_exception, internal_error
from modelplane_server.http.lifecycle import ServerState

logger = logging.getLogger(__name__)

UNOBSERVED_PREFIXES = ("/health", "/metrics")  # probes and scrapes: not work to drain
# Bounds what one request can make the event loop parse and tokenize: 2048 embedding inputs of a
# few KiB each fit, a prompt a thousand times any context does not.
MAX_BODY_BYTES = 16 * 1024 * 1024


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
