"""The operator's own Prometheus metrics, defined once here.

`modelplane_operator_reconciles_total{result}`, `modelplane_operator_reconcile_errors_total`,
`modelplane_operator_reconcile_duration_seconds`, `modelplane_operator_model_deployments{ready}`
(managed ModelDeployments by their Ready condition) and `modelplane_operator_leader`. `serve()`
exposes them on the port the settings name.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "modelplane_operator_reconciles",
    "Reconciles of ModelDeployments by result (success, invalid, error).",
    ["result"],
)
ERRORS = Counter(
    "modelplane_operator_reconcile_errors",
    "Reconciles that ended in an error (API failure or invalid spec).",
)
DURATION = Histogram(
    "modelplane_operator_reconcile_duration_seconds",
    "Wall time of one reconcile.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MANAGED = Gauge(
    "modelplane_operator_model_deployments",
    "ModelDeployments this operator manages, by the status of their Ready condition.",
    ["ready"],
)
LEADER = Gauge(
    "modelplane_operator_leader",
    "1 while this replica holds the Lease and reconciles (always 1 without leader election).",
)
READY_STATES = ("True", "False", "Unknown")

_ready_by_key: dict[tuple[str, str], str] = {}


def _move(key: tuple[str, str], ready: str | None) -> None:
    # Adjust the gauge by one rather than recounting every key: reconciles run thousands of times.
    previous = _ready_by_key.pop(key, None)
    if previous is not None:
        MANAGED.labels(ready=previous).dec()
    if ready is not None:
        _ready_by_key[key] = ready
        MANAGED.labels(ready=ready).inc()


def record_reconcile(key: tuple[str, str], result: str, seconds: float, ready: str | None) -> None:
    """Count one reconcile; `ready` None keeps the last known Ready state."""
    RECONCILES.labels(result=result).inc()
    DURATION.observe(seconds)
    if result != "success":
        ERRORS.inc()
    if ready is not None:
        _move(key, ready if ready in READY_STATES else "Unknown")


def forget(key: tuple[str, str]) -> None:
    """A ModelDeployment was deleted: stop counting it."""
    _move(key, None)


def serve(port: int) -> None:
    """Serve /metrics on `port` (0 disables)."""
    if port:
        start_http_server(port)
