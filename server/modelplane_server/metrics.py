"""Every Prometheus metric the server exposes, defined once, in one registry per app instance.

`Metrics` is also the engines' `EngineObserver`: they call it from their step thread, so each hook
only does a few histogram observations (prometheus-client is thread-safe). Gauges that mirror the
engine's state (waiting, running, steps) are read from `EngineStats` at scrape time rather than
pushed, so they can never drift. Names follow Prometheus conventions and mirror vLLM's where vLLM
has one (docs/server.md has the mapping), prefixed `modelplane_`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelplane_server.engine.contract import (
    DEFAULT_TENANT,
    EngineStats,
    RequestStats,
    StepStats,
)

PREFIX = "modelplane"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# vLLM's buckets (vllm/v1/metrics/loggers.py), so dashboards built for it read the same.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
INTER_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.001, 0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HTTP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_COUNT_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512)
FILL_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

StatsSource = Callable[[], EngineStats | None]
# The tenant label of requests whose tenant the key file does not name: the label's values stay
# bounded by the key file whatever the engine is handed.
OTHER_TENANT = "other"


class _EngineStateCollector(Collector):
    """Gauges read from the engine at scrape time, and the server's own state."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        stats = self._metrics.engine_stats()
        running = GaugeMetricFamily(
            f"{PREFIX}_num_requests_running", "Generation requests in the running batch."
        )
        waiting = GaugeMetricFamily(
            f"{PREFIX}_num_requests_waiting", "Generation requests queued for a batch slot."
        )
        queue_depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "Generation requests queued (the same value as num_requests_waiting); the operator's "
            "HPA scales on its per-replica average (docs/server-contract.md).",
        )
        waiting_tokens = GaugeMetricFamily(
            f"{PREFIX}_num_waiting_prompt_tokens", "Prompt tokens of the queued requests."
        )
        batch_fill = GaugeMetricFamily(
            f"{PREFIX}_batch_fill",
            "Running generation requests / --max-batch-size: 1 means the batch is full and "
            "newcomers queue (an autoscaling signal before latency shows it).",
        )
        kv_usage = GaugeMetricFamily(
            f"{PREFIX}_kv_cache_usage",
            "Tokens the running sequences hold in the KV cache / what it can hold "
            "(--max-batch-size x context length), 0..1: long contexts fill it before the batch.",
        )
        steps = CounterMetricFamily(f"{PREFIX}_engine_steps", "Generation forward steps run.")
        prefix_queries = CounterMetricFamily(
            f"{PREFIX}_prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache (hit rate = hits / queries).",
        )
        prefix_hits = CounterMetricFamily(
            f"{PREFIX}_prefix_cache_hits",
            "Prompt tokens whose keys and values came from the prefix cache, not a prefill.",
        )
        prefix_evictions = CounterMetricFamily(
            f"{PREFIX}_prefix_cache_evictions",
            "Prefix cache blocks dropped, least recently used first, to stay in "
            "--prefix-cache-tokens.",
        )
        prefix_tokens = GaugeMetricFamily(
            f"{PREFIX}_prefix_cache_tokens", "Prompt-prefix tokens held in the prefix cache."
        )
        prefix_bytes = GaugeMetricFamily(
            f"{PREFIX}_prefix_cache_bytes",
            "Memory of the prefix cache's keys and values (tokens x layers x key and value).",
        )
        prefix = (prefix_queries, prefix_hits, prefix_evictions, prefix_tokens, prefix_bytes)
        if stats is not None:
            cache = stats.prefix_cache
            prefix_queries.add_metric([], cache.queries_tokens)
            prefix_hits.add_metric([], cache.hit_tokens)
            prefix_evictions.add_metric([], cache.evicted_blocks)
            prefix_tokens.add_metric([], cache.cached_tokens)
            prefix_bytes.add_metric([], cache.cached_bytes)
        tenant_waiting = GaugeMetricFamily(
            f"{PREFIX}_tenant_num_requests_waiting",
            "Generation requests queued for a batch slot, by tenant (the key file's tenants, "
            "'default' and 'other').",
            labels=["tenant"],
        )
        if stats is not None:
            by_label: collections.Counter[str] = collections.Counter(
                dict.fromkeys(self._metrics.tenant_labels, 0)
            )
            for tenant, count in stats.waiting_by_tenant:
                by_label[self._metrics.tenant_label(tenant)] += count
            for label, count in sorted(by_label.items()):
                tenant_waiting.add_metric([label], count)
            capacity = max(stats.kv_cache_capacity_tokens, 1)
            kv_usage.add_metric([], stats.kv_cache_tokens / capacity)
            running.add_metric([], stats.running)
            batch_fill.add_metric([], stats.running / max(stats.max_batch_size, 1))
            waiting.add_metric([], stats.waiting)
            queue_depth.add_metric([], stats.waiting)
            waiting_tokens.add_metric([], stats.waiting_prompt_tokens)
            steps.add_metric([], stats.steps_total)
        yield from (running, waiting, queue_depth, batch_fill, kv_usage, waiting_tokens, steps)
        yield from prefix
        yield tenant_waiting
        ready = GaugeMetricFamily(
            f"{PREFIX}_server_ready", "1 when the models are loaded and the server admits work."
        )
        ready.add_metric([], 1.0 if self._metrics.is_ready() else 0.0)
        draining = GaugeMetricFamily(f"{PREFIX}_server_draining", "1 from SIGTERM on.")
        draining.add_metric([], 1.0 if self._metrics.is_draining() else 0.0)
        yield from (ready, draining)


class Metrics:
    """The registry and the instruments; the engines' observer; the HTTP layer's recorder."""

    def __init__(self, tenants: Iterable[str] = ()) -> None:
        # The tenant label's values: the key file's tenants, the default and the catch-all.
        self.tenant_labels = frozenset({*tenants, DEFAULT_TENANT, OTHER_TENANT})
        self.registry = CollectorRegistry(auto_describe=True)
        self.stats_source: StatsSource = lambda: None
        self.is_ready: Callable[[], bool] = lambda: False
        self.is_draining: Callable[[], bool] = lambda: False
        self._finished_counts: collections.Counter[str] = collections.Counter()
        self._rejected_counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        registry = self.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        registry.register(_EngineStateCollector(self))

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, buckets=buckets, registry=registry)

        # Generation requests (reported by the engine once per finished request).
        self.queue_time = histogram(
            "request_queue_time_seconds", "Time a request waited for a batch slot.",
            REQUEST_LATENCY_BUCKETS,
        )  # fmt: skip
        self.time_to_first_token = histogram(
            "time_to_first_token_seconds", "Arrival to the first generated token.", TTFT_BUCKETS
        )
        self.inter_token_latency = histogram(
            "inter_token_latency_seconds", "Time between consecutive generated tokens.",
            INTER_TOKEN_BUCKETS,
        )  # fmt: skip
        self.e2e_latency = histogram(
            "e2e_request_latency_seconds", "Arrival to the last token, per request.",
            REQUEST_LATENCY_BUCKETS,
        )  # fmt: skip
        self.request_prompt_tokens = histogram(
            "request_prompt_tokens", "Prompt length of finished requests.", TOKEN_COUNT_BUCKETS
        )
        self.request_generation_tokens = histogram(
            "request_generation_tokens", "Generated tokens of finished requests.",
            TOKEN_COUNT_BUCKETS,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens of finished requests.", registry=registry
        )
        self.generation_tokens = Counter(
            f"{PREFIX}_generation_tokens", "Tokens generated by finished requests.",
            registry=registry,
        )  # fmt: skip
        self.requests_finished = Counter(
            f"{PREFIX}_requests_finished",
            "Finished generation requests by finish reason "
            "(stop, length, cancelled, timeout, abort).",
            ["finished_reason"],
            registry=registry,
        )
        self.rejections = Counter(
            f"{PREFIX}_admission_rejections",
            "Requests refused before admission, by reason.",
            ["reason"],
            registry=registry,
        )
        # Per tenant (fair sharing): what each got and what each was refused.
        self.tenant_requests_finished = Counter(
            f"{PREFIX}_tenant_requests_finished", "Finished generation requests by tenant.",
            ["tenant"], registry=registry,
        )  # fmt: skip
        self.tenant_prompt_tokens = Counter(
            f"{PREFIX}_tenant_prompt_tokens", "Prompt tokens of finished requests, by tenant.",
            ["tenant"], registry=registry,
        )  # fmt: skip
        self.tenant_generation_tokens = Counter(
            f"{PREFIX}_tenant_generation_tokens", "Tokens generated, by tenant.", ["tenant"],
            registry=registry,
        )  # fmt: skip
        self.tenant_rejections = Counter(
            f"{PREFIX}_tenant_admission_rejections",
            "Requests refused before admission, by tenant and reason (tenant_queue_full: the "
            "tenant's own limit; queue_full: the server's).",
            ["tenant", "reason"],
            registry=registry,
        )
        # Generation steps (reported by the engine after every forward step).
        self.batch_size = histogram(
            "batch_size", "Sequences in one generation step.", BATCH_SIZE_BUCKETS
        )
        self.batch_fill = histogram(
            "batch_fill_ratio", "batch_size / max_batch_size of one generation step.", FILL_BUCKETS
        )
        self.iteration_tokens = histogram(
            "iteration_tokens", "Tokens (prefill + decode) computed in one step.",
            TOKEN_COUNT_BUCKETS,
        )  # fmt: skip
        self.step_duration = histogram(
            "step_duration_seconds", "Wall time of one generation step.", STEP_BUCKETS
        )
        # Embeddings (reported by the embedding batcher once per forward).
        self.embedding_batch_size = histogram(
            "embedding_batch_size", "Texts in one embedding forward.", BATCH_SIZE_BUCKETS
        )
        self.embedding_batch_duration = histogram(
            "embedding_batch_duration_seconds", "Wall time of one embedding forward.", STEP_BUCKETS
        )
        self.embedding_tokens = Counter(
            f"{PREFIX}_embedding_tokens", "Tokens embedded.", registry=registry
        )
        # HTTP (recorded by the app's middleware).
        self.http_requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "HTTP request duration until the response (or stream) ended.",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.http_in_flight = Gauge(
            f"{PREFIX}_http_requests_in_flight", "HTTP requests being served.", registry=registry
        )

    # --- EngineObserver ----------------------------------------------------------------------

    def on_step(self, stats: StepStats) -> None:
        self.batch_size.observe(stats.batch_size)
        if stats.max_batch_size > 0:
            self.batch_fill.observe(stats.batch_size / stats.max_batch_size)
        self.iteration_tokens.observe(stats.prefill_tokens + stats.decode_tokens)
        self.step_duration.observe(stats.duration_s)

    def on_request_finished(self, stats: RequestStats) -> None:
        reason = str(stats.finish_reason)
        self.requests_finished.labels(reason).inc()
        tenant = self.tenant_label(stats.tenant)
        self.tenant_requests_finished.labels(tenant).inc()
        self.tenant_prompt_tokens.labels(tenant).inc(stats.prompt_tokens)
        self.tenant_generation_tokens.labels(tenant).inc(stats.completion_tokens)
        with self._lock:
            self._finished_counts[reason] += 1
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.generation_tokens.inc(stats.completion_tokens)
        self.request_prompt_tokens.observe(stats.prompt_tokens)
        self.request_generation_tokens.observe(stats.completion_tokens)
        self.queue_time.observe(stats.queue_time_s)
        self.e2e_latency.observe(stats.e2e_latency_s)
        if stats.time_to_first_token_s is not None:
            self.time_to_first_token.observe(stats.time_to_first_token_s)
        for latency in stats.inter_token_latencies_s:
            self.inter_token_latency.observe(latency)

    def on_rejected(self, reason: str, tenant: str = DEFAULT_TENANT) -> None:
        self.rejections.labels(reason).inc()
        self.tenant_rejections.labels(self.tenant_label(tenant), reason).inc()
        with self._lock:
            self._rejected_counts[reason] += 1

    def on_embedding_batch(self, batch_size: int, tokens: int, duration_s: float) -> None:
        self.embedding_batch_size.observe(batch_size)
        self.embedding_tokens.inc(tokens)
        self.embedding_batch_duration.observe(duration_s)

    def tenant_label(self, tenant: str) -> str:
        return tenant if tenant in self.tenant_labels else OTHER_TENANT

    # --- readers -----------------------------------------------------------------------------

    def engine_stats(self) -> EngineStats | None:
        return self.stats_source()

    def finished_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._finished_counts)

    def rejected_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected_counts)

    def observe_http(self, route: str, method: str, status: int, duration_s: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_duration.labels(route, method).observe(duration_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
