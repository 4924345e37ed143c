"""The gate every endpoint passes first: does the server take work now, and which engine serves the
requested model. Engine admission errors map to HTTP statuses here and only here."""

from __future__ import annotations

from dataclasses import dataclass

from modelplane_server.engine.contract import (
    DEFAULT_TENANT,
    EmbeddingEngine,
    EngineError,
    GenerationEngine,
    InvalidRequestError,
    NotAcceptingError,
    PromptTooLongError,
    QueueFullError,
    TenantQueueFullError,
)
from modelplane_server.http.errors import ApiError, ErrorType, invalid, retry_after, unavailable
from modelplane_server.http.health import Lifecycle
from modelplane_server.metrics import Metrics

LOADING_RETRY_AFTER_S = 10.0
DRAINING_RETRY_AFTER_S = 1.0  # another replica can take it at once


@dataclass(frozen=True)
class Engines:
    """What the server serves once loading has finished."""

    generation: GenerationEngine
    embedding: EmbeddingEngine | None
    generation_model_id: str


@dataclass(frozen=True)
class Limits:
    queue_timeout_s: float
    request_timeout_s: float


def engine_error(
    error: EngineError, input_param: str = "prompt", grammar_param: str = "response_format"
) -> ApiError:
    """The one place engine admission errors become HTTP statuses; `input_param` names the field
    that held the input (`prompt`, `messages`, `input`), `grammar_param` the one the output
    constraint came from (`response_format`, `tools`)."""
    if isinstance(error, TenantQueueFullError):
        return ApiError(
            429,
            f"Your API key's tenant is at its queue limit: {error}. Other tenants are still "
            "admitted; retry later.",
            type=ErrorType.RATE_LIMIT,
            code="tenant_queue_full",
            headers=retry_after(error.retry_after_s),
        )
    if isinstance(error, QueueFullError):
        return ApiError(
            429,
            f"The server is at capacity: {error}. Retry later.",
            type=ErrorType.RATE_LIMIT,
            code="queue_full",
            headers=retry_after(error.retry_after_s),
        )
    if isinstance(error, PromptTooLongError):
        return invalid(
            input_param,
            f"{error} (the limit is {error.limit} tokens)",
            code="context_length_exceeded",
        )
    if isinstance(error, InvalidRequestError):
        param = grammar_param if error.param == "grammar" else error.param
        return invalid(param or input_param, str(error))
    if isinstance(error, NotAcceptingError):
        return unavailable(f"The server is not accepting work: {error}", 1.0, "not_accepting")
    return ApiError(500, f"The engine failed: {error}", type=ErrorType.SERVER, code="engine_error")


class Admission:
    """The lifecycle, metrics and limits the endpoints share; holds the engines once loaded."""

    def __init__(self, lifecycle: Lifecycle, metrics: Metrics, limits: Limits) -> None:
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.limits = limits
        self.engines: Engines | None = None

    def loaded(self, tenant: str = DEFAULT_TENANT) -> Engines:
        """The engines, or a 503 while loading or draining (counted for the caller's tenant)."""
        if self.lifecycle.draining:
            self.metrics.on_rejected("draining", tenant)
            raise unavailable(
                "The server is shutting down; retry on another replica.",
                DRAINING_RETRY_AFTER_S,
                "draining",
            )
        if self.engines is None or not self.lifecycle.accepting:
            self.metrics.on_rejected("not_ready", tenant)
            raise unavailable("The model is still loading.", LOADING_RETRY_AFTER_S, "loading")
        return self.engines

    def generation_engine(
        self, requested: str | None, tenant: str = DEFAULT_TENANT
    ) -> tuple[GenerationEngine, str]:
        engines = self.loaded(tenant)
        served = engines.generation_model_id
        if requested not in (None, "", served):
            embedding = engines.embedding
            hint = (
                f" ('{requested}' is an embedding model)"
                if embedding is not None and requested == embedding.model_id
                else ""
            )
            raise ApiError(
                404,
                f"The model '{requested}' does not exist{hint}; this server generates with "
                f"'{served}'.",
                type=ErrorType.NOT_FOUND,
                param="model",
                code="model_not_found",
            )
        return engines.generation, served

    def embedding_engine(
        self, requested: str | None, tenant: str = DEFAULT_TENANT
    ) -> EmbeddingEngine:
        engines = self.loaded(tenant)
        engine = engines.embedding
        if engine is None:
            raise ApiError(
                404,
                "Embeddings are disabled on this server (--embedding-model=none).",
                type=ErrorType.NOT_FOUND,
                param="model",
                code="model_not_found",
            )
        if requested not in (None, "", engine.model_id):
            raise ApiError(
                404,
                f"The model '{requested}' does not exist; this server embeds with "
                f"'{engine.model_id}'.",
                type=ErrorType.NOT_FOUND,
                param="model",
                code="model_not_found",
            )
        return engine
