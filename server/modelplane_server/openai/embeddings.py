"""`POST /v1/embeddings` and our `POST /v1/similarity`: texts through the embedding engine."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence

from starlette.requests import Request

from modelplane_server.api_keys import tenant_of
from modelplane_server.engine.contract import EmbeddingEngine, EngineError
from modelplane_server.http.errors import invalid
from modelplane_server.http.streaming import until_disconnected
from modelplane_server.openai.admission import Admission, engine_error
from modelplane_server.openai.protocol import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    SimilarityRequest,
    SimilarityResponse,
    Usage,
)


async def _embed(
    raw: Request, engine: EmbeddingEngine, texts: Sequence[str], input_param: str
) -> tuple[list[list[float]], int]:
    try:
        return await until_disconnected(raw.receive, engine.embed(texts))
    except EngineError as error:
        raise engine_error(error, input_param) from error


async def create_embeddings(
    admission: Admission, body: EmbeddingRequest, raw: Request
) -> EmbeddingResponse:
    engine = admission.embedding_engine(body.model, tenant_of(raw.scope))
    texts = body.texts()
    if body.dimensions is not None and body.dimensions != engine.dimensions:
        raise invalid(
            "dimensions",
            f"This model's embeddings have {engine.dimensions} dimensions; "
            f"got dimensions={body.dimensions}.",
        )
    vectors, tokens = await _embed(raw, engine, texts, "input")
    encode = _base64_floats if body.encoding_format == "base64" else list
    return EmbeddingResponse(
        data=[Embedding(index=i, embedding=encode(v)) for i, v in enumerate(vectors)],
        model=engine.model_id,
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )


async def similarity(
    admission: Admission, body: SimilarityRequest, raw: Request
) -> SimilarityResponse:
    engine = admission.embedding_engine(body.model, tenant_of(raw.scope))
    queries = body.queries if body.queries is not None else body.texts
    unique = list(dict.fromkeys([*queries, *body.texts]))
    vectors, tokens = await _embed(raw, engine, unique, "texts")
    matrix = cosine_matrix(
        [vectors[unique.index(q)] for q in queries],
        [vectors[unique.index(t)] for t in body.texts],
    )
    return SimilarityResponse(
        model=engine.model_id,
        matrix=matrix,
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's `encoding_format=base64`: little-endian float32s, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def cosine_matrix(rows: list[list[float]], columns: list[list[float]]) -> list[list[float]]:
    """Cosine similarity of every row vector with every column vector."""
    import numpy as np  # lazily: only this endpoint needs it

    left = np.asarray(rows, dtype=np.float64)
    right = np.asarray(columns, dtype=np.float64)
    left /= np.maximum(np.linalg.norm(left, axis=1, keepdims=True), 1e-12)
    right /= np.maximum(np.linalg.norm(right, axis=1, keepdims=True), 1e-12)
    similarity: list[list[float]] = np.clip(left @ right.T, -1.0, 1.0).tolist()
    return similarity
