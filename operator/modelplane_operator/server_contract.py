"""The operator's model of the inference server (docs/server-contract.md), written down once.

The operator never imports the server; this module is its side of the contract: port, health paths,
flag names and the lifecycle arithmetic (grace period, preStop). The server's settings implement the
other side, and tests on both sides check the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

PORT = 8000
PORT_NAME = "http"
LIVENESS_PATH = "/health/live"
READINESS_PATH = "/health/ready"
STARTUP_PATH = "/health/startup"
METRICS_PATH = "/metrics"
OPENAI_BASE_PATH = "/v1"
METRIC_PREFIX = "modelplane_"
# The gauge the HPA's Pods metric reads (through a custom-metrics adapter) for targetQueueDepth.
QUEUE_DEPTH_METRIC = "modelplane_queue_depth"
# Running sequences / --max-batch-size, 0..1.
BATCH_FILL_METRIC = "modelplane_batch_fill"
# Running sequences' tokens in the KV cache / what it can hold (--max-batch-size x context), 0..1.
KV_CACHE_USAGE_METRIC = "modelplane_kv_cache_usage"
# The SLO indicators: HTTP requests by route and status; two latency histograms and their bounds.
HTTP_REQUESTS_METRIC = "modelplane_http_requests_total"
UNAVAILABLE_STATUS_PATTERN = "5..|429"
TTFT_HISTOGRAM = "modelplane_time_to_first_token_seconds"
E2E_HISTOGRAM = "modelplane_e2e_request_latency_seconds"
# The canary analysis' latency checks also read these two.
ITL_HISTOGRAM = "modelplane_inter_token_latency_seconds"
QUEUE_TIME_HISTOGRAM = "modelplane_request_queue_time_seconds"
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.001, 0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
ENV_PREFIX = "MODELPLANE_"
# `modelplane-server download --progress-port`: where a ModelCache's download serves its progress.
DOWNLOAD_PROGRESS_PORT = 8090
DOWNLOAD_PROGRESS_PATH = "/progress"

# Endpoints must be removed from the Service before the server stops admitting work.
PRE_STOP_SLEEP_SECONDS = 5
# Grace beyond the drain timeout: preStop sleep plus time to flush and exit.
TERMINATION_GRACE_MARGIN_SECONDS = 15

# Flag names, exactly as the server parses them.
FLAG_PORT = "--port"
FLAG_MODEL = "--model"
FLAG_GGUF_FILE = "--gguf-file"
FLAG_SERVED_MODEL_NAME = "--served-model-name"
FLAG_DTYPE = "--dtype"
FLAG_DEVICE = "--device"
FLAG_MAX_BATCH_SIZE = "--max-batch-size"
FLAG_MAX_BATCH_TOKENS = "--max-batch-tokens"
FLAG_MAX_PREFILL_TOKENS = "--max-prefill-tokens"
FLAG_PREFIX_CACHE_TOKENS = "--prefix-cache-tokens"
FLAG_MAX_WAIT_MS = "--max-wait-ms"
FLAG_MAX_QUEUE = "--max-queue"
FLAG_DRAIN_TIMEOUT_S = "--drain-timeout-s"
# The key file; a single key is MODELPLANE_API_KEY only (the server has no --api-key flag, so
# `--api-key` is a prefix of this flag and refused with it).
FLAG_API_KEY_FILE = "--api-key-file"

DTYPES = ("auto", "float32", "bfloat16", "float16")

# The server's default limits, as the operator renders them when the spec leaves them out (the CRD's
# defaults and `ServerArgs`' come from here); tested against the server's own settings.
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_BATCH_TOKENS = 4096
DEFAULT_MAX_WAIT_MS = 5
DEFAULT_MAX_QUEUE = 256
DEFAULT_DRAIN_TIMEOUT_SECONDS = 30
# Rendered only when the spec sets them (fields added after the others: leaving them out keeps the
# Deployments of existing ModelDeployments unchanged, so an operator upgrade rolls no pod).
DEFAULT_MAX_PREFILL_TOKENS = 512
DEFAULT_PREFIX_CACHE_TOKENS = 8192

# The flags the operator renders and relies on, and where the spec sets each instead: an extra arg
# that repeated one would win (it comes last) and break the pod silently, so the CRD refuses it.
OWNED_FLAGS = {
    FLAG_PORT: "the port is fixed by the server contract (spec.service.port sets the Service's)",
    FLAG_MODEL: "use spec.model.uri",
    FLAG_GGUF_FILE: "use spec.model.ggufFile",
    FLAG_SERVED_MODEL_NAME: "use spec.model.servedModelName",
    FLAG_DTYPE: "use spec.model.dtype",
    FLAG_DEVICE: "use spec.accelerator.count",
    FLAG_MAX_BATCH_SIZE: "use spec.server.maxBatchSize",
    FLAG_MAX_BATCH_TOKENS: "use spec.server.maxBatchTokens",
    FLAG_MAX_PREFILL_TOKENS: "use spec.server.maxPrefillTokens",
    FLAG_PREFIX_CACHE_TOKENS: "use spec.server.prefixCacheTokens",
    FLAG_MAX_WAIT_MS: "use spec.server.maxWaitMs",
    FLAG_MAX_QUEUE: "use spec.server.maxQueue",
    FLAG_DRAIN_TIMEOUT_S: "use spec.server.drainTimeoutSeconds",
    FLAG_API_KEY_FILE: "use spec.server.apiKeys",
}


def flag_spellings(flag: str) -> str:
    """A regular expression (RE2 and Python alike) for every argument that sets `flag` in the
    server's parser: argparse takes the flag or any unambiguous prefix of it (`--max-batch-s`),
    alone (the value follows) or with `=value`. An ambiguous prefix is an error there, so
    refusing it here too loses nothing."""
    nested = ""
    for char in reversed(flag[3:]):
        nested = f"({char}{nested})?"
    return f"^{flag[:3]}{nested}(=|$)"


@dataclass(frozen=True)
class ServerArgs:
    """The server knobs the operator renders, already resolved from the spec."""

    model: str
    served_model_name: str
    gguf_file: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_prefill_tokens: int | None = None  # None: not rendered, the server's default
    prefix_cache_tokens: int | None = None
    max_wait_ms: int = DEFAULT_MAX_WAIT_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    drain_timeout_seconds: int = DEFAULT_DRAIN_TIMEOUT_SECONDS
    api_key_file: str | None = None
    extra_args: tuple[str, ...] = ()


def container_args(args: ServerArgs) -> list[str]:
    """The container `args` for the server, in a stable order; extra args last so they win."""
    rendered = [
        f"{FLAG_PORT}={PORT}",
        f"{FLAG_MODEL}={args.model}",
        f"{FLAG_SERVED_MODEL_NAME}={args.served_model_name}",
    ]
    if args.gguf_file:
        rendered.append(f"{FLAG_GGUF_FILE}={args.gguf_file}")
    rendered += [
        f"{FLAG_DTYPE}={args.dtype}",
        f"{FLAG_DEVICE}={args.device}",
        f"{FLAG_MAX_BATCH_SIZE}={args.max_batch_size}",
        f"{FLAG_MAX_BATCH_TOKENS}={args.max_batch_tokens}",
    ]
    if args.max_prefill_tokens is not None:
        rendered.append(f"{FLAG_MAX_PREFILL_TOKENS}={args.max_prefill_tokens}")
    if args.prefix_cache_tokens is not None:
        rendered.append(f"{FLAG_PREFIX_CACHE_TOKENS}={args.prefix_cache_tokens}")
    rendered += [
        f"{FLAG_MAX_WAIT_MS}={args.max_wait_ms}",
        f"{FLAG_MAX_QUEUE}={args.max_queue}",
        f"{FLAG_DRAIN_TIMEOUT_S}={args.drain_timeout_seconds}",
    ]
    if args.api_key_file:
        rendered.append(f"{FLAG_API_KEY_FILE}={args.api_key_file}")
    return rendered + list(args.extra_args)


def termination_grace_seconds(drain_timeout_seconds: int) -> int:
    """Longer than preStop + drain, so the kubelet never kills a draining server."""
    return drain_timeout_seconds + TERMINATION_GRACE_MARGIN_SECONDS
