"""What the autoscaler says, in the ModelDeployment's words (pure: dicts in, a condition out).

`AutoscalerReady` mirrors the HPA's or the KEDA ScaledObject's own conditions, and when the metric
cannot be read says why in words a user can act on ("no adapter serves custom.metrics.k8s.io",
"Prometheus returned no series for ..."), followed by what the autoscaler itself said. The desired
replica count comes from the autoscaler too: status must say what is true while it owns them.
The measured startup time of the pods, from which the autoscaler's windows derive, is read here.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from modelplane_operator.conditions import AUTOSCALER_READY, Condition
from modelplane_operator.kinds import SCALED_OBJECT

Object = dict[str, Any]

KEDA_FALLBACK = "KEDAFallback"
PROMETHEUS_URL_MISSING = "PrometheusURLMissing"
# What KEDA's Prometheus scaler says when the query returns nothing (ignoreNullValues: false).
_KEDA_EMPTY_RESULT = "target may be lost"


def autoscaler_condition(
    *,
    wanted: bool,
    suspended: bool,
    autoscaler: Object | None,
    problem: tuple[str, str] | None = None,
) -> Condition:
    """AutoscalerReady. `problem`: (reason, message) when the autoscaler could not be rendered
    (its CRD missing, no Prometheus URL for KEDA)."""
    if not wanted:
        return Condition(AUTOSCALER_READY, "True", "NotRequested", "spec.autoscaling is not set")
    if suspended:
        return Condition(AUTOSCALER_READY, "True", "Suspended", "no autoscaler while suspended")
    if problem is not None:
        return Condition(AUTOSCALER_READY, "False", *problem)
    if autoscaler is None:
        return Condition(
            AUTOSCALER_READY, "Unknown", "Creating", "the autoscaler does not exist yet"
        )
    if autoscaler.get("kind") == SCALED_OBJECT.kind:
        return _scaled_object_condition(autoscaler)
    return _hpa_condition(autoscaler)


def _conditions_by_type(item: Object) -> dict[str, Object]:
    return {c.get("type", ""): c for c in (item.get("status") or {}).get("conditions") or []}


def _hpa_condition(hpa: Object) -> Condition:
    by_type = _conditions_by_type(hpa)
    for condition_type in ("AbleToScale", "ScalingActive"):
        item = by_type.get(condition_type)
        if item is not None and item.get("status") == "False":
            message = item.get("message", "")
            reason, words = missing_metric(message) or (
                item.get("reason") or condition_type,
                message,
            )
            return Condition(AUTOSCALER_READY, "False", reason, words)
    active = by_type.get("ScalingActive")
    if active is None:
        return Condition(AUTOSCALER_READY, "Unknown", "Pending", "the HPA has not reported yet")
    return Condition(
        AUTOSCALER_READY, "True", active.get("reason") or "ScalingActive", active.get("message", "")
    )


def _scaled_object_condition(scaled: Object) -> Condition:
    """KEDA's Ready and Fallback conditions: a fallback in force is not ready (the replicas are
    held, not scaled), and an empty Prometheus result is named as such."""
    by_type = _conditions_by_type(scaled)
    ready, fallback = by_type.get("Ready") or {}, by_type.get("Fallback") or {}
    query = ", ".join(
        str((trigger.get("metadata") or {}).get("query", ""))
        for trigger in (scaled.get("spec") or {}).get("triggers") or []
    )
    if ready.get("status") == "False":
        message = str(ready.get("message", ""))
        if _KEDA_EMPTY_RESULT in message:
            words = f"Prometheus returned no series for {query} (KEDA: {message})"
            return Condition(AUTOSCALER_READY, "False", METRIC_MISSING, words)
        return Condition(
            AUTOSCALER_READY, "False", ready.get("reason") or "ScaledObjectNotReady", message
        )
    if fallback.get("status") == "True":
        return Condition(
            AUTOSCALER_READY,
            "False",
            KEDA_FALLBACK,
            "KEDA cannot read the metric and holds the replicas (fallback, never a scale-down): "
            f"is Prometheus up and does {query} return series? (KEDA: {fallback.get('message')})",
        )
    if ready.get("status") != "True":
        return Condition(
            AUTOSCALER_READY, "Unknown", "Pending", "KEDA has not reported on the ScaledObject yet"
        )
    return Condition(
        AUTOSCALER_READY,
        "True",
        ready.get("reason") or "ScaledObjectReady",
        ready.get("message", ""),
    )


METRICS_API_MISSING = "MetricsAPIMissing"
METRICS_API_UNAVAILABLE = "MetricsAPIUnavailable"
METRIC_MISSING = "MetricMissing"
_NO_SERIES = (
    "Prometheus returned no series for {metric} on this ModelDeployment's pods: is the server "
    "scraped (MonitoringReady) and does the adapter have a rule for it?"
)
_METRIC_NAME = re.compile(r"unable to get metric (\S+?):")
# What the HPA controller (and the adapter behind it) write when the metric cannot be read, and
# what that means for a user: (substring of the HPA's message, reason, words).
_METRIC_FAILURES = (
    (
        "no custom metrics API (custom.metrics.k8s.io) registered",
        METRICS_API_MISSING,
        "no adapter serves custom.metrics.k8s.io: install a metrics adapter (e.g. "
        "prometheus-adapter) with the rules in docs/dataplane.md",
    ),
    (
        "the server is currently unable to handle the request",
        METRICS_API_UNAVAILABLE,
        "the adapter behind custom.metrics.k8s.io does not answer",
    ),
    (
        "could not find the metric",
        METRIC_MISSING,
        _NO_SERIES,
    ),
    (
        "no metrics returned from custom metrics API",
        METRIC_MISSING,
        _NO_SERIES,
    ),
)


def missing_metric(hpa_message: str) -> tuple[str, str] | None:
    """(reason, words) when the HPA cannot read its metric for a known cause, else None.

    The HPA's own message follows the words, so nothing it said is lost.
    """
    for needle, reason, words in _METRIC_FAILURES:
        if needle in hpa_message:
            found = _METRIC_NAME.search(hpa_message)
            metric = found.group(1) if found else "the metric"
            return reason, f"{words.format(metric=metric)} (HPA: {hpa_message})"
    return None


def autoscaled_desired(autoscaler: Object, current: int) -> int:
    """The replicas an autoscaler wants, never outside its range. An HPA's `desiredReplicas` once
    it has reported (it has conditions then), before that the floor it is about to enforce: the
    Deployment's own `replicas` lags, the HPA writes it only when it next acts. A ScaledObject
    reports no count (the HPA KEDA makes writes the Deployment's), so its range bounds that."""
    spec = autoscaler.get("spec") or {}
    status = autoscaler.get("status") or {}
    if autoscaler.get("kind") == SCALED_OBJECT.kind:
        if current == 0 and spec.get("idleReplicaCount") == 0:
            return 0  # scaled to zero while idle, as asked
        low = int(spec.get("minReplicaCount") or 0)
        high = int(spec.get("maxReplicaCount") or max(low, current))
        return min(max(current, low), high)
    low = int(spec.get("minReplicas") or 1)
    high = int(spec.get("maxReplicas") or max(low, current))
    reported = bool(status.get("conditions")) and status.get("desiredReplicas") is not None
    wanted = int(status["desiredReplicas"]) if reported else current
    return min(max(wanted, low), high)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def startup_seconds(pods: list[Object]) -> float | None:
    """The longest time from a ready pod's start to its Ready condition (image pull, download,
    load and warm-up: what a new replica takes to serve); None when no pod is ready."""
    measured = []
    for pod in pods:
        status = pod.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        if not status.get("startTime") or not ready or ready.get("status") != "True":
            continue
        if not ready.get("lastTransitionTime"):
            continue
        elapsed = _time(ready["lastTransitionTime"]) - _time(status["startTime"])
        measured.append(elapsed.total_seconds())
    return max(measured) if measured else None
