"""The OpenAI error shape and every mapping from a failure to it.

Whatever goes wrong (a malformed body, a field of the wrong type, an unknown route, a full queue, a
bug) the client gets `{"error": {"message", "type", "param", "code"}}` with a 4xx or 5xx status,
never FastAPI's `{"detail": ...}`. Validation errors become 400 with `param` set to the offending
field's path (`messages[0].content`), the way OpenAI reports them.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

logger = logging.getLogger(__name__)


class ErrorType(enum.StrEnum):
    """OpenAI's error `type` values, plus the few we need for states OpenAI has no name for."""

    INVALID_REQUEST = "invalid_request_error"
    AUTHENTICATION = "authentication_error"
    NOT_FOUND = "not_found_error"
    RATE_LIMIT = "rate_limit_error"  # OpenAI's type for its 429s; ours mean "queue full"
    UNAVAILABLE = "service_unavailable_error"
    TIMEOUT = "timeout_error"
    SERVER = "server_error"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx."""

    error: ErrorDetail


class ApiError(Exception):
    """A failure the HTTP layer turns into an OpenAI-shaped response with this status."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: ErrorType = ErrorType.INVALID_REQUEST,  # OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        detail = ErrorDetail(
            message=self.message, type=self.type.value, param=self.param, code=self.code
        )
        return ErrorResponse(error=detail)

    def response(self) -> JSONResponse:
        return JSONResponse(
            self.body().model_dump(), status_code=self.status_code, headers=self.headers
        )


def invalid(param: str | None, message: str, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def retry_after(seconds: float) -> dict[str, str]:
    """`Retry-After` is whole seconds (RFC 9110); round up so a client never retries too early."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def unavailable(message: str, retry_after_s: float, code: str) -> ApiError:
    return ApiError(
        503, message, type=ErrorType.UNAVAILABLE, code=code, headers=retry_after(retry_after_s)
    )


# --- validation errors ------------------------------------------------------------------------


def param_path(loc: Sequence[int | str]) -> str | None:
    """`("body", "messages", 0, "content")` -> `messages[0].content`; None for the body itself."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or None


def _common_prefix(locs: list[tuple[int | str, ...]]) -> tuple[int | str, ...]:
    prefix = locs[0]
    for loc in locs[1:]:
        length = 0
        while length < min(len(prefix), len(loc)) and prefix[length] == loc[length]:
            length += 1
        prefix = prefix[:length]
    return prefix


def validation_error(errors: Sequence[Any]) -> ApiError:
    """One 400 for a request that failed validation, about its first offending field.

    A union-typed field (`prompt: str | list[str]`) fails once per member, with the member's name
    appended to the location; the errors about the same field are folded into one message and
    `param` is their common prefix, the field itself.
    """
    if not errors:
        return invalid(None, "The request is invalid.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        return invalid(None, f"The request body is not valid JSON: {reason}".rstrip(": "))
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return invalid(None, "The request body is missing: send a JSON object.")
    loc = tuple(first.get("loc", ()))
    field = loc[:2]
    same_field = [e for e in errors if tuple(e.get("loc", ()))[:2] == field]
    prefix = _common_prefix([tuple(e.get("loc", ())) for e in same_field])
    param = param_path(prefix)
    messages = list(
        dict.fromkeys(
            str(e.get("msg", "invalid")).removeprefix("Value error, ") for e in same_field
        )
    )
    text = " or ".join(messages[:4])
    return invalid(param, f"{param}: {text}" if param else f"The request body is invalid: {text}")


# --- exception handlers (registered by the app) ---------------------------------------------


async def handle_api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def handle_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error(exc.errors()).response()


FASTAPI_UNPARSABLE_BODY = "There was an error parsing the body"  # e.g. a body that is not UTF-8
_HTTP_ERROR_TYPES = {
    401: ErrorType.AUTHENTICATION,
    404: ErrorType.NOT_FOUND,
    429: ErrorType.RATE_LIMIT,
    503: ErrorType.UNAVAILABLE,
}


async def handle_http_exception(_request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method, an unreadable body)."""
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    error_type = _HTTP_ERROR_TYPES.get(
        status, ErrorType.SERVER if status >= 500 else ErrorType.INVALID_REQUEST
    )
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if status == 400 and message == FASTAPI_UNPARSABLE_BODY:
        message = "The request body could not be parsed: send UTF-8 encoded JSON."
    return ApiError(status, message, type=error_type, headers=dict(exc.headers or {})).response()


def internal_error() -> ApiError:
    return ApiError(
        500,
        "The server hit an unexpected error; it has been logged.",
        type=ErrorType.SERVER,
        code="internal_error",
    )
