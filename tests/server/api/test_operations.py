"""Overload, authentication, probes, metrics and drain, in-process with the fake engines."""

from __future__ import annotations

import asyncio
import base64
import re
import struct
import threading
import time
from pathlib import Path

import pytest

from modelplane_server.metrics import Metrics

from .fakes import FakeGenerationEngine
from .helpers import assert_openai_error, eventually, serve

COMPLETION = {"prompt": "x", "max_tokens": 2}


# --- overload -----------------------------------------------------------------------------------


async def test_a_full_queue_answers_429_with_retry_after_at_once() -> None:
    engine = FakeGenerationEngine(max_queue=2)
    async with serve(generation=engine) as served:
        engine.pause()
        queued = [
            asyncio.create_task(served.client.post("/v1/completions", json=COMPLETION))
            for _ in range(2)
        ]
        await eventually(lambda: len(engine.waiting) == 2)
        started = time.perf_counter()
        rejected = await served.client.post("/v1/completions", json=COMPLETION)
        elapsed = time.perf_counter() - started
        while_full = (await served.client.get("/metrics")).text
        engine.resume()
        accepted = await asyncio.gather(*queued)
        metrics = (await served.client.get("/metrics")).text
    error = assert_openai_error(rejected, 429)
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "queue_full"
    assert rejected.headers["retry-after"] == "3"  # the engine said 2.2 s: rounded up
    assert elapsed < 0.5, f"the 429 took {elapsed * 1000:.1f} ms"
    assert [response.status_code for response in accepted] == [200, 200]
    assert 'modelplane_admission_rejections_total{reason="queue_full"} 1.0' in metrics
    assert sample(while_full, "modelplane_num_requests_waiting") == 2
    assert sample(while_full, "modelplane_queue_depth") == 2


async def test_a_request_that_waits_past_the_queue_timeout_gets_504() -> None:
    engine = FakeGenerationEngine(max_batch_size=1, step_delay_s=0.01)
    async with serve(generation=engine, queue_timeout_s=0.2) as served:
        long = asyncio.create_task(
            served.client.post("/v1/completions", json={"prompt": "x", "max_tokens": 40})
        )
        await eventually(lambda: len(engine.running) == 1)
        waited = await served.client.post("/v1/completions", json=COMPLETION)
        assert (await long).status_code == 200
    error = assert_openai_error(waited, 504)
    assert error["code"] == "queue_timeout"


async def test_a_full_embedding_queue_answers_429() -> None:
    async with serve() as served:
        assert served.embedding is not None
        served.embedding.max_queue = 0
        response = await served.client.post("/v1/embeddings", json={"input": "x"})
    assert_openai_error(response, 429)
    assert response.headers["retry-after"] == "1"


# --- authentication -----------------------------------------------------------------------------


async def test_api_keys_guard_the_api_but_not_health_or_metrics(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# rotated 2026-11\nfile-key\n\n", encoding="utf-8")
    async with serve(api_key="env-key", api_key_file=key_file) as served:
        client = served.client
        missing = await client.post("/v1/completions", json=COMPLETION)
        wrong = await client.post(
            "/v1/completions", json=COMPLETION, headers={"Authorization": "Bearer nope"}
        )
        not_bearer = await client.get("/v1/models", headers={"Authorization": "Basic env-key"})
        by_env = await client.post(
            "/v1/completions", json=COMPLETION, headers={"Authorization": "Bearer env-key"}
        )
        by_file = await client.get("/v1/models", headers={"Authorization": "bearer file-key"})
        open_paths = [
            (await client.get(path)).status_code
            for path in ("/health/live", "/health/ready", "/health/startup", "/metrics", "/stats")
        ]
        bad_body_without_key = await client.post("/v1/completions", content=b"{")
    for response in (missing, wrong, not_bearer, bad_body_without_key):
        error = assert_openai_error(response, 401)
        assert error["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    assert by_env.status_code == 200
    assert by_file.status_code == 200
    assert open_paths == [200] * 5


# --- probes -------------------------------------------------------------------------------------


async def test_startup_and_readiness_wait_for_the_models() -> None:
    gate = threading.Event()
    async with serve(load_gate=gate, wait_ready=False) as served:
        client = served.client
        assert (await client.get("/health/startup")).status_code == 503
        assert (await client.get("/health/ready")).status_code == 503
        assert (await client.get("/health/live")).status_code == 200
        loading = await client.post("/v1/completions", json=COMPLETION)
        error = assert_openai_error(loading, 503)
        assert error["code"] == "loading"
        assert int(loading.headers["retry-after"]) >= 1
        assert (await client.get("/v1/models")).json()["data"] == []
        gate.set()
        await eventually(lambda: served.state.lifecycle.accepting)
        assert (await client.get("/health/startup")).json() == {"status": "started"}
        assert (await client.get("/health/ready")).json() == {"status": "ready"}
        assert (await client.post("/v1/completions", json=COMPLETION)).status_code == 200


async def test_liveness_fails_when_work_waits_and_no_step_finishes() -> None:
    engine = FakeGenerationEngine()
    async with serve(generation=engine, liveness_stall_s=0.2) as served:
        client = served.client
        assert (await client.get("/health/live")).status_code == 200
        engine.pause()
        stuck = asyncio.create_task(client.post("/v1/completions", json=COMPLETION))
        await eventually(lambda: len(engine.waiting) == 1)
        assert (await client.get("/health/live")).status_code == 200  # not stalled yet

        async def live_status() -> int:
            return (await client.get("/health/live")).status_code

        deadline = time.monotonic() + 5
        while await live_status() != 503:
            assert time.monotonic() < deadline, "liveness never noticed the stall"
            await asyncio.sleep(0.02)
        body = (await client.get("/health/live")).json()
        assert body["status"] == "stalled"
        assert "no engine step finished" in body["detail"]
        engine.resume()
        assert (await stuck).status_code == 200
        assert await live_status() == 200


async def test_an_idle_engine_is_alive_however_long_ago_it_stepped() -> None:
    engine = FakeGenerationEngine()
    async with serve(generation=engine, liveness_stall_s=0.2) as served:
        engine.last_step = time.monotonic() - 3600  # an hour of idleness
        assert (await served.client.get("/health/live")).status_code == 200


async def test_a_failed_load_fails_startup_and_liveness() -> None:
    engine = FakeGenerationEngine()

    async def broken_start() -> None:
        raise RuntimeError("CUDA is not available")

    engine.start = broken_start  # type: ignore[method-assign]
    async with serve(generation=engine, wait_ready=False) as served:
        await eventually(lambda: served.state.lifecycle.phase.value == "failed")
        startup = await served.client.get("/health/startup")
        live = await served.client.get("/health/live")
    assert startup.status_code == 503
    assert live.status_code == 503
    assert "CUDA is not available" in startup.json()["detail"]


# --- drain --------------------------------------------------------------------------------------


async def test_drain_finishes_in_flight_work_and_refuses_new_work() -> None:
    engine = FakeGenerationEngine(step_delay_s=0.01)
    async with serve(generation=engine, drain_timeout_s=10) as served:
        client = served.client
        in_flight = asyncio.create_task(
            client.post("/v1/completions", json={"prompt": "x", "max_tokens": 30})
        )
        await eventually(lambda: len(engine.running) == 1)
        drain = served.state.drain()
        ready = await client.get("/health/ready")
        refused = await client.post("/v1/completions", json=COMPLETION)
        startup = await client.get("/health/startup")
        finished = await in_flight
        await drain
    assert ready.status_code == 503
    assert ready.json()["status"] == "draining"
    error = assert_openai_error(refused, 503)
    assert error["code"] == "draining"
    assert refused.headers["retry-after"] == "1"
    assert startup.status_code == 200
    assert finished.status_code == 200
    assert finished.json()["choices"][0]["finish_reason"] == "length"
    assert finished.json()["usage"]["completion_tokens"] == 30


async def test_refusals_while_draining_are_counted_for_the_callers_tenant(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("sk-a tenant=team-a\n", encoding="utf-8")
    bearer = {"Authorization": "Bearer sk-a"}
    async with serve(api_key_file=key_file, drain_timeout_s=1) as served:
        client = served.client
        drain = served.state.drain()
        chat = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
            headers=bearer,
        )
        embedding = await client.post("/v1/embeddings", json={"input": "x"}, headers=bearer)
        metrics = (await client.get("/metrics")).text
        await drain
    for response in (chat, embedding):
        assert assert_openai_error(response, 503)["code"] == "draining"
    assert (
        'modelplane_tenant_admission_rejections_total{reason="draining",tenant="team-a"} 2.0'
        in metrics
    )
    assert 'reason="draining",tenant="default"' not in metrics


async def test_drain_timeout_ends_the_rest_with_abort() -> None:
    engine = FakeGenerationEngine(step_delay_s=0.01)
    async with serve(generation=engine, drain_timeout_s=0.1) as served:
        in_flight = asyncio.create_task(
            served.client.post("/v1/completions", json={"prompt": "x", "max_tokens": 200})
        )
        await eventually(lambda: len(engine.running) == 1)
        await served.state.drain()
        response = await in_flight
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "abort"
    assert 0 < body["usage"]["completion_tokens"] < 200


# --- metrics ------------------------------------------------------------------------------------

DOCUMENTED_METRICS = [
    "modelplane_num_requests_running",
    "modelplane_num_requests_waiting",
    "modelplane_queue_depth",
    "modelplane_batch_fill",
    "modelplane_kv_cache_usage",
    "modelplane_num_waiting_prompt_tokens",
    "modelplane_engine_steps_total",
    "modelplane_prefix_cache_queries_total",
    "modelplane_prefix_cache_hits_total",
    "modelplane_prefix_cache_evictions_total",
    "modelplane_prefix_cache_tokens",
    "modelplane_prefix_cache_bytes",
    "modelplane_server_ready",
    "modelplane_server_draining",
    "modelplane_request_queue_time_seconds_bucket",
    "modelplane_time_to_first_token_seconds_bucket",
    "modelplane_inter_token_latency_seconds_bucket",
    "modelplane_e2e_request_latency_seconds_bucket",
    "modelplane_request_prompt_tokens_bucket",
    "modelplane_request_generation_tokens_bucket",
    "modelplane_prompt_tokens_total",
    "modelplane_generation_tokens_total",
    "modelplane_requests_finished_total",
    "modelplane_admission_rejections_total",
    "modelplane_batch_size_bucket",
    "modelplane_batch_fill_ratio_bucket",
    "modelplane_iteration_tokens_bucket",
    "modelplane_step_duration_seconds_bucket",
    "modelplane_embedding_batch_size_bucket",
    "modelplane_embedding_batch_duration_seconds_bucket",
    "modelplane_embedding_tokens_total",
    "modelplane_http_requests_total",
    "modelplane_http_request_duration_seconds_bucket",
    "modelplane_http_requests_in_flight",
    "process_start_time_seconds",
]


def sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not exposed"
    return float(match.group(1))


async def test_metrics_expose_the_documented_names_and_count_real_traffic() -> None:
    async with serve() as served:
        client = served.client
        for _ in range(3):
            await client.post("/v1/completions", json={"prompt": "abcd", "max_tokens": 5})
        await client.post("/v1/completions", json={"prompt": 1})
        metrics_view = served.state.metrics
        metrics_view.on_embedding_batch(batch_size=3, tokens=12, duration_s=0.01)
        metrics_view.on_rejected("queue_full")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    assert set(DOCUMENTED_METRICS) <= names, set(DOCUMENTED_METRICS) - names
    assert sample(text, "modelplane_prompt_tokens_total") == 12
    assert sample(text, "modelplane_generation_tokens_total") == 15
    assert sample(text, "modelplane_requests_finished_total", '{finished_reason="length"}') == 3
    assert sample(text, "modelplane_time_to_first_token_seconds_count") == 3
    assert sample(text, "modelplane_inter_token_latency_seconds_count") == 12
    assert sample(text, "modelplane_engine_steps_total") == 15
    assert sample(text, "modelplane_batch_fill_ratio_count") == 15
    assert sample(text, "modelplane_num_requests_running") == 0
    assert sample(text, "modelplane_batch_fill") == 0
    assert sample(text, "modelplane_server_ready") == 1
    assert sample(text, "modelplane_embedding_tokens_total") == 12
    route = '{method="POST",route="/v1/completions",status="200"}'
    assert sample(text, "modelplane_http_requests_total", route) == 3
    route = '{method="POST",route="/v1/completions",status="400"}'
    assert sample(text, "modelplane_http_requests_total", route) == 1


def test_batch_fill_is_running_over_the_max_batch_size() -> None:
    """The autoscaling signal for batching servers (docs/server-contract.md): 1 means full."""
    from prometheus_client import generate_latest

    from modelplane_server.engine.contract import EngineStats, PrefixCacheStats

    metrics = Metrics()
    metrics.stats_source = lambda: EngineStats(
        waiting=3,
        running=24,
        waiting_prompt_tokens=90,
        steps_total=7,
        last_step_monotonic=None,
        max_batch_size=32,
        kv_cache_tokens=2048,
        kv_cache_capacity_tokens=32 * 256,
        prefix_cache=PrefixCacheStats(
            queries_tokens=1000,
            hit_tokens=640,
            cached_tokens=256,
            cached_bytes=4096,
            capacity_tokens=8192,
            evicted_blocks=2,
        ),
    )
    text = generate_latest(metrics.registry).decode()
    assert sample(text, "modelplane_batch_fill") == 0.75
    assert sample(text, "modelplane_kv_cache_usage") == 0.25
    assert sample(text, "modelplane_prefix_cache_queries_total") == 1000
    assert sample(text, "modelplane_prefix_cache_hits_total") == 640
    assert sample(text, "modelplane_prefix_cache_evictions_total") == 2
    assert sample(text, "modelplane_prefix_cache_tokens") == 256
    assert sample(text, "modelplane_prefix_cache_bytes") == 4096
    assert sample(text, "modelplane_queue_depth") == 3


async def test_each_app_has_its_own_registry() -> None:
    async with serve() as first, serve() as second:
        await first.client.post("/v1/completions", json=COMPLETION)
        first_text = (await first.client.get("/metrics")).text
        second_text = (await second.client.get("/metrics")).text
    assert 'route="/v1/completions"' in first_text
    assert 'route="/v1/completions"' not in second_text


# --- embeddings and similarity ------------------------------------------------------------------


async def test_embeddings_float_and_base64_agree() -> None:
    async with serve() as served:
        assert served.embedding is not None
        floats = await served.client.post("/v1/embeddings", json={"input": ["a b", "c"]})
        packed = await served.client.post(
            "/v1/embeddings", json={"input": "a b", "encoding_format": "base64", "dimensions": 8}
        )
        expected = served.embedding.vector("a b")
    assert floats.status_code == 200, floats.text
    body = floats.json()
    assert body["object"] == "list"
    assert body["model"] == "fake-embed"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][0]["object"] == "embedding"
    assert body["data"][0]["embedding"] == pytest.approx(expected)
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}
    raw = base64.b64decode(packed.json()["data"][0]["embedding"])
    assert list(struct.unpack("<8f", raw)) == pytest.approx(expected, abs=1e-6)


async def test_similarity_matrix_and_queries() -> None:
    async with serve() as served:
        assert served.embedding is not None
        square = await served.client.post("/v1/similarity", json={"texts": ["a", "b", "c"]})
        ranked = await served.client.post(
            "/v1/similarity", json={"texts": ["a", "b", "c"], "queries": ["b"]}
        )
        a, b = served.embedding.vector("a"), served.embedding.vector("b")
    assert square.status_code == 200, square.text
    matrix = square.json()["matrix"]
    assert len(matrix) == 3
    assert all(len(row) == 3 for row in matrix)
    for i in range(3):
        assert matrix[i][i] == pytest.approx(1.0)
        for j in range(3):
            assert matrix[i][j] == pytest.approx(matrix[j][i])
    assert matrix[0][1] == pytest.approx(sum(x * y for x, y in zip(a, b, strict=True)))
    assert ranked.json()["matrix"] == [pytest.approx(matrix[1])]
    assert ranked.json()["object"] == "similarity"
    assert square.json()["usage"]["prompt_tokens"] == 3


async def test_embeddings_can_be_disabled() -> None:
    async with serve(without_embeddings=True, embedding_model="none") as served:
        response = await served.client.post("/v1/embeddings", json={"input": "x"})
        models = await served.client.get("/v1/models")
    error = assert_openai_error(response, 404, "model")
    assert "disabled" in error["message"]
    assert [m["id"] for m in models.json()["data"]] == ["fake-llm"]


def test_docs_list_exactly_the_exposed_metrics() -> None:
    docs = (Path(__file__).resolve().parents[3] / "docs" / "server.md").read_text()
    rows = [line for line in docs.splitlines() if line.startswith("| `modelplane_")]
    documented = {name for row in rows for name in re.findall(r"`(modelplane_[a-z0-9_]+)", row)}
    metrics = Metrics()
    exposed = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in metrics.registry.collect()
        if family.name.startswith("modelplane_")
    }
    assert documented == exposed
