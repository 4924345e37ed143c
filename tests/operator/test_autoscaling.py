"""The autoscaler, rendered and read back: actuator choice, windows from the measured startup,
KEDA's ScaledObject (fallback, no null values), and AutoscalerReady for KEDA's conditions."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane_operator.autoscaler_conditions import (
    KEDA_FALLBACK,
    METRIC_MISSING,
    autoscaled_desired,
    autoscaler_condition,
    startup_seconds,
)
from modelplane_operator.autoscaling import (
    ASSUMED_STARTUP_SECONDS,
    choose_actuator,
    round_up_startup,
    windows,
)
from modelplane_operator.kinds import OPTIONAL_CRDS, SCALED_OBJECT
from modelplane_operator.models import Autoscaling, ModelDeploymentSpec
from modelplane_operator.render import Owner, RenderOptions, render

OWNER = Owner(name="demo", namespace="models", uid="u")
PROMETHEUS = "http://prometheus.monitoring.svc:9090"
KEDA_INSTALLED = RenderOptions(installed_crds=frozenset(OPTIONAL_CRDS), prometheus_url=PROMETHEUS)


def autoscaling(**fields: Any) -> Autoscaling:
    return Autoscaling.model_validate({"maxReplicas": 4, "targetQueueDepth": 2, **fields})


def kinds(spec: dict[str, Any], options: RenderOptions) -> set[str]:
    full = ModelDeploymentSpec.model_validate({"model": {"uri": "hf://o/m"}, **spec})
    return {child["kind"] for child in render(OWNER, full, options).children}


@pytest.mark.parametrize(
    ("fields", "keda_usable", "actuator"),
    [
        ({}, True, "KEDA"),
        ({}, False, "HPA"),
        ({"targetCPUUtilizationPercent": 70}, True, "HPA"),  # KEDA's fallback cannot hold CPU
        ({"targetMemoryUtilizationPercent": 80}, True, "HPA"),  # ... nor memory
        ({"actuator": "HPA"}, True, "HPA"),
        ({"actuator": "KEDA"}, False, "KEDA"),
    ],
)
def test_auto_picks_keda_only_where_it_can_work(
    fields: dict[str, Any], keda_usable: bool, actuator: str
) -> None:
    assert choose_actuator(autoscaling(**fields), keda_usable) == actuator


def test_one_autoscaler_per_target_and_the_hpa_without_prometheus() -> None:
    spec = {"autoscaling": {"maxReplicas": 4, "targetQueueDepth": 2}}
    with_keda = kinds(spec, KEDA_INSTALLED)
    assert "ScaledObject" in with_keda
    assert "HorizontalPodAutoscaler" not in with_keda
    no_url = RenderOptions(installed_crds=frozenset(OPTIONAL_CRDS))
    hpa_only = kinds(spec, no_url)
    assert "HorizontalPodAutoscaler" in hpa_only
    assert "ScaledObject" not in hpa_only


def test_windows_follow_the_measured_startup() -> None:
    unmeasured = windows(autoscaling(), None)
    assert unmeasured.startup_seconds == ASSUMED_STARTUP_SECONDS
    assert unmeasured.scale_down_stabilization_seconds == 300  # never under five minutes
    slow = windows(autoscaling(), 240)
    assert slow.scale_up_period_seconds == 240
    assert slow.scale_down_stabilization_seconds == 720  # three startups
    assert windows(autoscaling(), 5000).scale_down_stabilization_seconds == 3600  # HPA's limit
    assert windows(autoscaling(), 1).scale_up_period_seconds == 15
    explicit = windows(autoscaling(scaleDownStabilizationSeconds=30), 240)
    assert explicit.scale_down_stabilization_seconds == 30


def test_the_scaled_object_never_scales_down_on_missing_data() -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": "hf://o/m"},
            "autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetKVCacheUsagePercent": 70},
        }
    )
    rendered = render(OWNER, spec, KEDA_INSTALLED)
    (scaled,) = [c for c in rendered.children if c["kind"] == "ScaledObject"]
    body = scaled["spec"]
    assert body["fallback"] == {
        "failureThreshold": 3,
        "replicas": 2,
        "behavior": "currentReplicasIfHigher",
    }
    (trigger,) = body["triggers"]
    assert trigger["metadata"]["ignoreNullValues"] == "false"
    assert trigger["metadata"]["threshold"] == "0.7"
    assert trigger["metadata"]["serverAddress"] == PROMETHEUS
    assert 'modeldeployment="demo"' in trigger["metadata"]["query"]
    assert rendered.resolved.actuator == "KEDA"
    # The Deployment's replicas belong to the autoscaler.
    (deployment,) = [c for c in rendered.children if c["kind"] == "Deployment"]
    assert "replicas" not in deployment["spec"]


def scaled_object(*conditions: tuple[str, str, str, str]) -> dict[str, Any]:
    return {
        "kind": "ScaledObject",
        "spec": {
            "minReplicaCount": 2,
            "maxReplicaCount": 5,
            "triggers": [{"type": "prometheus", "metadata": {"query": "sum(q)"}}],
        },
        "status": {
            "conditions": [
                {"type": kind, "status": status, "reason": reason, "message": message}
                for kind, status, reason, message in conditions
            ]
        },
    }


@pytest.mark.parametrize(
    ("conditions", "expected", "words"),
    [
        ((), ("Unknown", "Pending"), "has not reported"),
        (
            (("Ready", "True", "ScaledObjectReady", "ScaledObject is defined correctly"),),
            ("True", "ScaledObjectReady"),
            "defined correctly",
        ),
        (
            (
                (
                    "Ready",
                    "False",
                    "ScaledObjectCheckFailed",
                    "prometheus metrics 'prometheus' target may be lost, the result is empty",
                ),
            ),
            ("False", METRIC_MISSING),
            "Prometheus returned no series for sum(q)",
        ),
        (
            (
                ("Ready", "True", "ScaledObjectReady", ""),
                ("Fallback", "True", "FallbackExists", "At least one trigger is falling back"),
            ),
            ("False", KEDA_FALLBACK),
            "holds the replicas",
        ),
    ],
)
def test_autoscaler_ready_mirrors_keda(
    conditions: tuple[tuple[str, str, str, str], ...], expected: tuple[str, str], words: str
) -> None:
    condition = autoscaler_condition(
        wanted=True, suspended=False, autoscaler=scaled_object(*conditions)
    )
    assert (condition.status, condition.reason) == expected
    assert words in condition.message


def test_a_missing_keda_crd_is_said() -> None:
    condition = autoscaler_condition(
        wanted=True,
        suspended=False,
        autoscaler=None,
        problem=("CRDNotInstalled", SCALED_OBJECT.absent()),
    )
    assert (condition.status, condition.reason) == ("False", "CRDNotInstalled")
    assert "scaledobjects.keda.sh is not installed" in condition.message


def test_desired_under_keda_is_the_deployments_within_the_range() -> None:
    assert autoscaled_desired(scaled_object(), 1) == 2
    assert autoscaled_desired(scaled_object(), 3) == 3
    assert autoscaled_desired(scaled_object(), 9) == 5


def pod(start: str, ready_at: str | None, ready: str = "True") -> dict[str, Any]:
    conditions = (
        []
        if ready_at is None
        else [{"type": "Ready", "status": ready, "lastTransitionTime": ready_at}]
    )
    return {"status": {"startTime": start, "conditions": conditions}}


def test_startup_is_the_slowest_ready_pods_start_to_ready() -> None:
    pods = [
        pod("2026-12-07T00:00:00Z", "2026-12-07T00:00:42Z"),
        pod("2026-12-07T00:01:00Z", "2026-12-07T00:02:01Z"),
        pod("2026-12-07T00:03:00Z", "2026-12-07T00:09:00Z", ready="False"),  # not ready: ignored
        pod("2026-12-07T00:03:00Z", None),
    ]
    assert startup_seconds(pods) == 61
    assert round_up_startup(61) == 65
    assert round_up_startup(0.2) == 5
    assert startup_seconds([pod("2026-12-07T00:03:00Z", None)]) is None


def test_scale_to_zero_is_keda_only_opt_in_and_wakes_on_the_activation_query() -> None:
    query = 'sum(rate(traefik_service_requests_total{service=~"models-demo-.*"}[1m]))'
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": "hf://o/m"},
            "autoscaling": {
                "actuator": "KEDA",
                "minReplicas": 1,
                "maxReplicas": 3,
                "targetQueueDepth": 2,
                "scaleToZero": {"activationQuery": query, "activationThreshold": 0.1},
            },
        }
    )
    (scaled,) = [
        c for c in render(OWNER, spec, KEDA_INSTALLED).children if c["kind"] == "ScaledObject"
    ]
    body = scaled["spec"]
    assert body["idleReplicaCount"] == 0
    assert body["minReplicaCount"] == 1  # the floor while active
    assert body["cooldownPeriod"] == 300  # the scale-down window, unmeasured startup
    activation = body["triggers"][-1]
    assert activation["metadata"]["query"] == query
    assert activation["metadata"]["activationThreshold"] == "0.1"
    # Only a wake-up signal: it never asks for more replicas than the gauges do.
    assert float(activation["metadata"]["threshold"]) >= 1e9
    # Scaled to zero while idle is what was asked: desired 0, not the floor.
    idle = {**scaled_object(), "spec": {**scaled_object()["spec"], "idleReplicaCount": 0}}
    assert autoscaled_desired(idle, 0) == 0
    assert autoscaled_desired(idle, 1) == 2
    with pytest.raises(ValueError, match="scaleToZero needs actuator KEDA"):
        Autoscaling.model_validate(
            {"maxReplicas": 3, "targetQueueDepth": 2, "scaleToZero": {"activationQuery": "up"}}
        )


def test_cpu_and_memory_targets_are_resource_metrics_of_the_hpa() -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": "hf://o/m"},
            "autoscaling": {
                "maxReplicas": 3,
                "targetCPUUtilizationPercent": 70,
                "targetMemoryUtilizationPercent": 85,
            },
        }
    )
    children = render(OWNER, spec, KEDA_INSTALLED).children
    (hpa,) = [child for child in children if child["kind"] == "HorizontalPodAutoscaler"]
    resources = {
        metric["resource"]["name"]: metric["resource"]["target"]["averageUtilization"]
        for metric in hpa["spec"]["metrics"]
    }
    assert resources == {"cpu": 70, "memory": 85}
