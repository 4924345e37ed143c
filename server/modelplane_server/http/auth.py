"""Optional Bearer API keys for the OpenAI routes (`/v1/...`).

A pure ASGI middleware rather than a FastAPI dependency, so that a request without a valid key is
refused (401, OpenAI shape) before its body is read or validated. Health, metrics and stats stay
open: the kubelet and Prometheus carry no key. Keys are compared by their SHA-256 digests with
`hmac.compare_digest`, so the comparison time does not depend on how much of a key matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from modelplane_server.http.errors import ApiError, ErrorType

PROTECTED_PREFIX = "/v1/"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self._digests = tuple(_digest(key) for key in keys)

    def _authorised(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        presented = _digest(token.strip())
        # Check every key (no early exit), so timing says nothing about which one matched.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self._digests
            or not str(scope["path"]).startswith(PROTECTED_PREFIX)
            or self._authorised(scope)
        ):
            await self.app(scope, receive, send)
            return
        error = ApiError(
            401,
            "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
            type=ErrorType.AUTHENTICATION,
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await error.response()(scope, receive, send)
