"""Autoscaling, rendered: which actuator owns the replicas, its windows, and its spec (pure).

Two actuators read the same signals. The HPA (autoscaling/v2) reads the server's gauges as Pods
metrics through a custom-metrics adapter; a KEDA ScaledObject queries Prometheus itself. Either way
the windows come from what a new replica costs: the measured time from a pod's start to Ready
(`status.measuredStartupSeconds`). Scale-up adds at most 100% (or 4 pods) per startup time, so the
autoscaler sees the replicas it added serve before it adds more; scale-down waits three startup
times (at least 5 minutes), because a replica removed too early costs a full startup to get back.

KEDA's defaults are wrong for serving and are overridden: `ignoreNullValues: false` (no series is
an error, not 0), and a `fallback` that keeps the current replicas when Prometheus cannot answer
(`currentReplicasIfHigher` with the minimum: never a scale-down on missing data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from lightkube.models.autoscaling_v2 import (
    CrossVersionObjectReference,
    HorizontalPodAutoscalerBehavior,
    HorizontalPodAutoscalerSpec,
    HPAScalingPolicy,
    HPAScalingRules,
    MetricIdentifier,
    MetricSpec,
    MetricTarget,
    PodsMetricSource,
    ResourceMetricSource,
)

from modelplane_operator import server_contract
from modelplane_operator.models import Autoscaling

Actuator = Literal["HPA", "KEDA"]

# Until a pod has been seen going from start to Ready, assume a minute.
ASSUMED_STARTUP_SECONDS = 60
MIN_SCALE_UP_PERIOD_SECONDS = 15
MAX_SCALE_UP_PERIOD_SECONDS = 1800  # the HPA's limit on a policy's periodSeconds
MIN_SCALE_DOWN_SECONDS = 300
MAX_SCALE_DOWN_SECONDS = 3600  # the HPA's limit on a stabilization window
SCALE_DOWN_STARTUPS = 3
SCALE_UP_PODS = 4
KEDA_POLLING_SECONDS = 15
# The activation trigger only wakes the deployment: a threshold this high never asks for a replica
# beyond what the gauges ask for.
ACTIVATION_ONLY_THRESHOLD = "1000000000"
KEDA_FAILURES_BEFORE_FALLBACK = 3


@dataclass(frozen=True)
class Windows:
    """The autoscaler's timing, resolved from the spec and the measured startup time."""

    startup_seconds: int
    scale_up_period_seconds: int
    scale_down_stabilization_seconds: int


def windows(autoscaling: Autoscaling, measured_startup_seconds: int | None) -> Windows:
    startup = measured_startup_seconds or ASSUMED_STARTUP_SECONDS
    scale_up = min(max(startup, MIN_SCALE_UP_PERIOD_SECONDS), MAX_SCALE_UP_PERIOD_SECONDS)
    scale_down = autoscaling.scale_down_stabilization_seconds
    if scale_down is None:
        scale_down = min(
            max(SCALE_DOWN_STARTUPS * startup, MIN_SCALE_DOWN_SECONDS), MAX_SCALE_DOWN_SECONDS
        )
    return Windows(startup, scale_up, scale_down)


def choose_actuator(autoscaling: Autoscaling, keda_usable: bool) -> Actuator:
    """The actuator `actuator: Auto` resolves to: KEDA when it can work (its CRD installed and a
    Prometheus URL configured) and no CPU or memory target is set; else the HPA."""
    if autoscaling.actuator != "Auto":
        return autoscaling.actuator
    return "KEDA" if keda_usable and not autoscaling.resource_targets else "HPA"


def behavior(timing: Windows) -> HorizontalPodAutoscalerBehavior:
    """The HPA behaviour both actuators use (KEDA passes it to the HPA it makes)."""
    period = timing.scale_up_period_seconds
    return HorizontalPodAutoscalerBehavior(
        scaleUp=HPAScalingRules(
            stabilizationWindowSeconds=0,
            selectPolicy="Max",
            policies=[
                HPAScalingPolicy(type="Percent", value=100, periodSeconds=period),
                HPAScalingPolicy(type="Pods", value=SCALE_UP_PODS, periodSeconds=period),
            ],
        ),
        scaleDown=HPAScalingRules(
            stabilizationWindowSeconds=timing.scale_down_stabilization_seconds
        ),
    )


def _pods_metric(name: str, average: str) -> MetricSpec:
    """A per-pod average of one of the server's gauges (served by a custom-metrics adapter)."""
    return MetricSpec(
        type="Pods",
        pods=PodsMetricSource(
            metric=MetricIdentifier(name=name),
            target=MetricTarget(type="AverageValue", averageValue=average),
        ),
    )


def _gauge_targets(autoscaling: Autoscaling) -> list[tuple[str, str, float]]:
    """(metric, HPA quantity, threshold) per gauge target: the per-replica average wanted."""
    targets = []
    if autoscaling.target_queue_depth is not None:
        depth = autoscaling.target_queue_depth
        targets.append((server_contract.QUEUE_DEPTH_METRIC, str(depth), float(depth)))
    if autoscaling.target_batch_fill_percent is not None:
        # The gauge is a fraction: 80 % is the quantity 800m.
        percent = autoscaling.target_batch_fill_percent
        targets.append((server_contract.BATCH_FILL_METRIC, f"{percent * 10}m", percent / 100))
    if autoscaling.target_kv_cache_usage_percent is not None:
        percent = autoscaling.target_kv_cache_usage_percent
        targets.append((server_contract.KV_CACHE_USAGE_METRIC, f"{percent * 10}m", percent / 100))
    return targets


def hpa_spec(target: str, autoscaling: Autoscaling, timing: Windows) -> HorizontalPodAutoscalerSpec:
    metrics = [
        _pods_metric(metric, quantity) for metric, quantity, _ in _gauge_targets(autoscaling)
    ]
    metrics += [
        MetricSpec(
            type="Resource",
            resource=ResourceMetricSource(
                name=resource,
                target=MetricTarget(type="Utilization", averageUtilization=percent),
            ),
        )
        for resource, percent in autoscaling.resource_targets.items()
    ]
    return HorizontalPodAutoscalerSpec(
        scaleTargetRef=CrossVersionObjectReference(
            apiVersion="apps/v1", kind="Deployment", name=target
        ),
        minReplicas=autoscaling.min_replicas,
        maxReplicas=autoscaling.max_replicas,
        metrics=metrics,
        behavior=behavior(timing),
    )


def _threshold(value: float) -> str:
    return f"{value:g}"


def scaled_object_spec(
    target: str,
    namespace: str,
    autoscaling: Autoscaling,
    timing: Windows,
    prometheus_url: str,
) -> dict[str, Any]:
    """A KEDA ScaledObject's spec (keda.sh/v1alpha1; no typed model exists)."""
    selector = f'namespace="{namespace}",modeldeployment="{target}"'
    triggers = [
        {
            "type": "prometheus",
            "name": metric.removeprefix(server_contract.METRIC_PREFIX).replace("_", "-"),
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": prometheus_url,
                # The sum over the replicas; the HPA KEDA makes divides by their count.
                "query": f"sum({metric}{{{selector}}})",
                "threshold": _threshold(threshold),
                "ignoreNullValues": "false",
            },
        }
        for metric, _, threshold in _gauge_targets(autoscaling)
    ]
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        "minReplicaCount": autoscaling.min_replicas,
        "maxReplicaCount": autoscaling.max_replicas,
        "pollingInterval": KEDA_POLLING_SECONDS,
        "initialCooldownPeriod": timing.startup_seconds,
        "fallback": {
            "failureThreshold": KEDA_FAILURES_BEFORE_FALLBACK,
            "replicas": autoscaling.min_replicas,
            "behavior": "currentReplicasIfHigher",
        },
        "advanced": {
            "horizontalPodAutoscalerConfig": {"behavior": behavior(timing).to_dict()},
        },
        "triggers": triggers,
    }
    zero = autoscaling.scale_to_zero
    if zero is not None:
        # Idle: 0 replicas; active: between minReplicaCount and maxReplicaCount.
        spec["idleReplicaCount"] = 0
        spec["cooldownPeriod"] = zero.idle_seconds or timing.scale_down_stabilization_seconds
        triggers.append(
            {
                "type": "prometheus",
                "name": "activation",
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": prometheus_url,
                    "query": zero.activation_query,
                    "threshold": ACTIVATION_ONLY_THRESHOLD,
                    "activationThreshold": _threshold(zero.activation_threshold),
                    "ignoreNullValues": "false",
                },
            }
        )
    return spec


def round_up_startup(seconds: float) -> int:
    """Measured startup, rounded up to 5 s so small differences between pods write nothing."""
    return max(5, 5 * math.ceil(seconds / 5))
