"""`GET /stats`: a JSON snapshot of the lifecycle, the request counts and the engines' state, for
people and the load tool (Prometheus reads `/metrics`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from modelplane_server.openai.admission import Admission


def server_stats(admission: Admission, http_in_flight: int) -> dict[str, Any]:
    lifecycle = admission.lifecycle
    now = lifecycle.monotonic()
    result: dict[str, Any] = {
        "phase": lifecycle.phase.value,
        "uptime_s": round(now - lifecycle.started_at, 3),
        "http_requests_in_flight": http_in_flight,
        "finished_requests": admission.metrics.finished_counts(),
        "rejected_requests": admission.metrics.rejected_counts(),
        "generation": None,
        "embedding": None,
    }
    engines = admission.engines
    if engines is None:
        return result
    stats = engines.generation.stats()
    recent = list(stats.recent_batch_sizes)
    result["generation"] = {
        "model": engines.generation_model_id,
        "context_length": engines.generation.context_length,
        "waiting": stats.waiting,
        "running": stats.running,
        "waiting_prompt_tokens": stats.waiting_prompt_tokens,
        "steps_total": stats.steps_total,
        "seconds_since_last_step": (
            None if stats.last_step_monotonic is None else round(now - stats.last_step_monotonic, 3)
        ),
        "max_batch_size": stats.max_batch_size,
        "recent_batch_sizes": recent,
        "mean_recent_batch_size": round(sum(recent) / len(recent), 2) if recent else None,
        "kv_cache_usage": round(stats.kv_cache_tokens / max(stats.kv_cache_capacity_tokens, 1), 4),
        "prefix_cache": dataclasses.asdict(stats.prefix_cache),
    }
    if engines.embedding is not None:
        result["embedding"] = {
            "model": engines.embedding.model_id,
            "dimensions": engines.embedding.dimensions,
            "context_length": engines.embedding.context_length,
        }
    return result
