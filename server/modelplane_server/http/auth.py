"""Optional Bearer API keys for the OpenAI routes (`/v1/...`).

A pure ASGI middleware rather than a FastAPI dependency, so that a request without a valid key is
refused (401, OpenAI shape) before its body is read or validated. Health, metrics and stats stay
open: the kubelet and Prometheus carry no key. Keys are compared by their SHA-256 digests with
`hmac.compare_digest`, so the comparison time does not depend on how much of a key matched.

A matched key's tenant goes on the request's scope state (`api_keys.tenant_of` reads it) for the
engine's fair sharing. Without keys every request is tenant `default`: no header names a tenant,
since with authentication off anyone could claim any tenant's share.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from modelplane_server.api_keys import TENANT_STATE_KEY, ApiKey
from modelplane_server.http.errors import ApiError, ErrorType

PROTECTED_PREFIX = "/v1/"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Iterable[ApiKey]) -> None:
        self.app = app
        self._digests = tuple((_digest(key.key), key.tenant) for key in keys)

    def _tenant(self, scope: Scope) -> str | None:
        """The tenant of the request's key, or None when it carries no valid key."""
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = _digest(token.strip())
        # Check every key (no early exit), so timing says nothing about which one matched.
        tenant = None
        for digest, key_tenant in self._digests:
            if hmac.compare_digest(presented, digest):
                tenant = key_tenant
        return tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self._digests
            or not str(scope["path"]).startswith(PROTECTED_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        tenant = self._tenant(scope)
        if tenant is not None:
            scope.setdefault("state", {})[TENANT_STATE_KEY] = tenant
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
