"""Failure taxonomy and status computation from live objects (pure: dicts in, conditions out).

Pods say *why* a model is not serving; the Deployment says how far the rollout got; the HPA says
whether scaling works. This module turns them into the conditions and replica counts of
`ModelDeployment.status`, naming the pod and quoting the kubelet's or scheduler's message so that
`kubectl get md` answers "what is wrong" without `kubectl describe`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from modelplane_operator.conditions import (
    AUTOSCALER_READY,
    MONITORING_READY,
    PODS_HEALTHY,
    PROGRESSING,
    READY,
    Condition,
)
from modelplane_operator.kinds import SERVICE_MONITOR
from modelplane_operator.render import GPU_RESOURCE

Object = dict[str, Any]

INSUFFICIENT_GPU = "InsufficientGPU"
UNSCHEDULABLE = "Unschedulable"
IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
OOM_KILLED = "OOMKilled"
CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
STARTUP_TIMEOUT = "StartupTimeout"
INVALID_SPEC = "InvalidSpec"
# Ready=False reasons that mean something is wrong (not merely in progress): each gets a Warning
# event on the ModelDeployment when Ready turns to it.
FAILURE_REASONS = frozenset(
    {
        INSUFFICIENT_GPU,
        UNSCHEDULABLE,
        IMAGE_PULL_BACK_OFF,
        CRASH_LOOP_BACK_OFF,
        OOM_KILLED,
        CONTAINER_CONFIG_ERROR,
        STARTUP_TIMEOUT,
        INVALID_SPEC,
    }
)

_IMAGE_PULL_REASONS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
# The first failure found in this order is the one reported: the root cause before its symptoms.
_SEVERITY = (
    OOM_KILLED,
    CRASH_LOOP_BACK_OFF,
    IMAGE_PULL_BACK_OFF,
    CONTAINER_CONFIG_ERROR,
    INSUFFICIENT_GPU,
    UNSCHEDULABLE,
)


@dataclass(frozen=True)
class Failure:
    """Why a pod (or the rollout) is not making progress."""

    reason: str
    message: str


def _container_failure(pod_name: str, status: Object) -> Failure | None:
    name = status.get("name", "?")
    state = status.get("state") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    if terminated.get("reason") == OOM_KILLED or (
        waiting.get("reason") == CRASH_LOOP_BACK_OFF and last.get("reason") == OOM_KILLED
    ):
        return Failure(
            OOM_KILLED,
            f"pod {pod_name}: container {name} was OOMKilled (exit code "
            f"{terminated.get('exitCode', last.get('exitCode', 137))}); raise "
            f"spec.accelerator.memory",
        )
    reason = waiting.get("reason")
    if reason == CRASH_LOOP_BACK_OFF:
        exit_code = last.get("exitCode")
        detail = f" (last exit code {exit_code})" if exit_code is not None else ""
        return Failure(
            CRASH_LOOP_BACK_OFF,
            f"pod {pod_name}: container {name} is crash-looping{detail}: "
            f"{waiting.get('message', '')}".rstrip(": "),
        )
    if reason in _IMAGE_PULL_REASONS:
        return Failure(
            IMAGE_PULL_BACK_OFF,
            f"pod {pod_name}: container {name} cannot pull its image: "
            f"{waiting.get('message', reason)}",
        )
    if reason == CONTAINER_CONFIG_ERROR:
        return Failure(
            CONTAINER_CONFIG_ERROR,
            f"pod {pod_name}: container {name}: {waiting.get('message', reason)}",
        )
    return None


def pod_failure(pod: Object) -> Failure | None:
    """The most severe failure of one pod, if any."""
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    found: list[Failure] = []
    for container in (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    ):
        failure = _container_failure(name, container)
        if failure is not None:
            found.append(failure)
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            message = condition.get("message", "")
            reason = (
                INSUFFICIENT_GPU if f"Insufficient {GPU_RESOURCE}" in message else UNSCHEDULABLE
            )
            found.append(Failure(reason, f"pod {name} is Pending: {message}"))
    if not found:
        return None
    return min(found, key=lambda failure: _SEVERITY.index(failure.reason))


def pods_failure(pods: list[Object]) -> Failure | None:
    """The most severe failure among live (not terminating) pods; ties go to the first by name."""
    found = [
        failure
        for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("name", ""))
        if not pod.get("metadata", {}).get("deletionTimestamp")
        for failure in [pod_failure(pod)]
        if failure is not None
    ]
    if not found:
        return None
    return min(found, key=lambda failure: _SEVERITY.index(failure.reason))


def _deployment_condition(deployment: Object, condition_type: str) -> Object:
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == condition_type:
            return dict(condition)
    return {}


@dataclass(frozen=True)
class Observed:
    """What the status subresource should say about replicas and conditions."""

    conditions: list[Condition]
    replicas: int
    ready_replicas: int
    updated_replicas: int
    desired_replicas: int


@dataclass(frozen=True)
class RolloutState:
    """The Deployment's progress towards the current spec."""

    exists: bool
    desired: int
    replicas: int
    ready: int
    updated: int
    complete: bool
    stalled_message: str | None


def rollout_state(deployment: Object | None) -> RolloutState:
    """Replica counts and completeness from the live Deployment (None: not created yet)."""
    if deployment is None:
        return RolloutState(False, 0, 0, 0, 0, complete=False, stalled_message=None)
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1) or 0)
    replicas = int(status.get("replicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    seen = int(status.get("observedGeneration") or 0) >= generation
    progress = _deployment_condition(deployment, "Progressing")
    stalled = progress.get("status") == "False" and progress.get("reason") == (
        "ProgressDeadlineExceeded"
    )
    return RolloutState(
        exists=True,
        desired=desired,
        replicas=replicas,
        ready=ready,
        updated=updated,
        complete=seen and updated >= desired and ready >= desired and replicas == desired,
        stalled_message=progress.get("message", "progress deadline exceeded") if stalled else None,
    )


def autoscaled_desired(hpa: Object, current: int) -> int:
    """The replicas an HPA wants: its `desiredReplicas` once it has reported (it has conditions
    then), before that the floor it is about to enforce; never outside [minReplicas, maxReplicas].
    The Deployment's own `replicas` lags: the HPA writes it only when it next acts."""
    spec = hpa.get("spec") or {}
    status = hpa.get("status") or {}
    low = int(spec.get("minReplicas") or 1)
    high = int(spec.get("maxReplicas") or max(low, current))
    reported = bool(status.get("conditions")) and status.get("desiredReplicas") is not None
    wanted = int(status["desiredReplicas"]) if reported else current
    return min(max(wanted, low), high)


def _with_desired(rollout: RolloutState, desired: int) -> RolloutState:
    """The rollout measured against the autoscaler's desired count rather than the Deployment's."""
    if desired == rollout.desired:
        return rollout
    return dataclasses.replace(rollout, desired=desired, complete=False)


def _progressing_condition(rollout: RolloutState) -> Condition:
    if rollout.stalled_message is not None:
        return Condition(
            PROGRESSING,
            "False",
            STARTUP_TIMEOUT,
            f"the rollout made no progress within the deadline: {rollout.stalled_message}",
        )
    if rollout.complete:
        return Condition(PROGRESSING, "True", "RolloutComplete", "all replicas updated")
    return Condition(
        PROGRESSING,
        "True",
        "RollingOut",
        f"{rollout.updated} of {rollout.desired} replicas updated, {rollout.ready} ready",
    )


def _ready_condition(  # noqa: PLR0911 - one return per Ready reason reads best
    rollout: RolloutState, failure: Failure | None, suspended: bool
) -> Condition:
    if not rollout.exists:
        return Condition(READY, "False", "Creating", "the Deployment does not exist yet")
    if rollout.complete:
        if suspended:
            return Condition(READY, "True", "Suspended", "scaled to zero by spec.suspend")
        if rollout.desired == 0:
            return Condition(READY, "True", "ScaledToZero", "0 replicas desired")
        return Condition(
            READY, "True", "Serving", f"{rollout.ready}/{rollout.desired} replicas ready"
        )
    if failure is not None:
        return Condition(READY, "False", failure.reason, failure.message)
    if rollout.stalled_message is not None:
        return Condition(READY, "False", STARTUP_TIMEOUT, rollout.stalled_message)
    if suspended:
        return Condition(READY, "False", "Suspending", f"{rollout.replicas} pods still running")
    return Condition(
        READY,
        "False",
        "Starting",
        f"{rollout.ready}/{rollout.desired} replicas ready, {rollout.updated} updated",
    )


def observe(
    *,
    deployment: Object | None,
    pods: list[Object],
    suspended: bool,
    autoscaling_wanted: bool,
    hpa: Object | None,
    monitoring_wanted: bool,
    monitoring_skipped: bool,
) -> Observed:
    """Conditions and replica counts from the live Deployment, pods and HPA."""
    rollout = rollout_state(deployment)
    if autoscaling_wanted and not suspended and hpa is not None and rollout.exists:
        rollout = _with_desired(rollout, autoscaled_desired(hpa, rollout.desired))
    failure = pods_failure(pods)
    if failure is not None:
        pods_healthy = Condition(PODS_HEALTHY, "False", failure.reason, failure.message)
    else:
        pods_healthy = Condition(PODS_HEALTHY, "True", "PodsHealthy", "no pod is failing")
    conditions = [
        _ready_condition(rollout, failure, suspended),
        _progressing_condition(rollout),
        pods_healthy,
        _autoscaler_condition(suspended, autoscaling_wanted, hpa),
        _monitoring_condition(monitoring_wanted, monitoring_skipped),
    ]
    return Observed(
        conditions=conditions,
        replicas=rollout.replicas,
        ready_replicas=rollout.ready,
        updated_replicas=rollout.updated,
        desired_replicas=rollout.desired,
    )


def _autoscaler_condition(suspended: bool, wanted: bool, hpa: Object | None) -> Condition:
    if not wanted:
        return Condition(AUTOSCALER_READY, "True", "NotRequested", "spec.autoscaling is not set")
    if suspended:
        return Condition(AUTOSCALER_READY, "True", "Suspended", "no autoscaler while suspended")
    if hpa is None:
        return Condition(AUTOSCALER_READY, "Unknown", "Creating", "the HPA does not exist yet")
    by_type = {item.get("type"): item for item in (hpa.get("status") or {}).get("conditions") or []}
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


def _monitoring_condition(wanted: bool, skipped: bool) -> Condition:
    if not wanted:
        return Condition(
            MONITORING_READY, "True", "Disabled", "spec.monitoring.serviceMonitor is false"
        )
    if skipped:
        return Condition(
            MONITORING_READY,
            "False",
            "CRDNotInstalled",
            SERVICE_MONITOR.absent(),
        )
    return Condition(MONITORING_READY, "True", "ServiceMonitorApplied", "the ServiceMonitor exists")
