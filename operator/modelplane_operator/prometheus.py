"""The Prometheus HTTP API, for the canary analysis: one instant query, one number back.

A query that Prometheus cannot answer (down, timeout, a PromQL error) raises `PrometheusError`
with a one-line reason; an empty result or NaN is None ("no data"). The analysis turns both into
Inconclusive, never a pass or a failure.
"""

from __future__ import annotations

import math

import httpx

TIMEOUT_SECONDS = 10.0


class PrometheusError(Exception):
    """Prometheus did not answer the query."""


class Prometheus:
    """Instant queries against one Prometheus (the operator's `prometheus.url`)."""

    def __init__(self, url: str, client: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=TIMEOUT_SECONDS)

    async def value(self, query: str) -> float | None:
        """The query's single value now; None when it has no data."""
        try:
            response = await self._client.get(f"{self.url}/api/v1/query", params={"query": query})
        except httpx.HTTPError as error:
            raise PrometheusError(f"{type(error).__name__}: {error}") from error
        try:
            body = response.json()
        except ValueError as error:
            raise PrometheusError(f"HTTP {response.status_code}, not JSON") from error
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType', 'error')}: {body.get('error', '')}")
        data = body.get("data") or {}
        result = data.get("result") or []
        if data.get("resultType") == "scalar":
            number = float(result[1])
        elif result:
            number = float(result[0]["value"][1])
        else:
            return None
        return None if math.isnan(number) else number

    async def close(self) -> None:
        await self._client.aclose()
