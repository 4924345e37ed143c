"""Failure taxonomy and status computation from live objects (pure: dicts in, conditions out).

Pods say *why* a model is not serving; the Deployment says how far the rollout got; the HPA says
whether scaling works. This module turns them into the conditions and replica counts of
`ModelDeployment.status`, naming the pod and quoting the kubelet's or scheduler's message so that
`kubectl get md` answers "what is wrong" without `kubectl describe`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from modelplane_operator.autoscaler_conditions import autoscaled_desired, autoscaler_condition
from modelplane_operator.conditions import (
    CRD_NOT_INSTALLED,
    MONITORING_READY,
    PODS_HEALTHY,
    PROGRESSING,
    READY,
    Condition,
)
from modelplane_operator.kinds import PROMETHEUS_RULE, SERVICE_MONITOR, ChildKind
from modelplane_operator.names import GPU_RESOURCE

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
    autoscaler: Object | None,
    autoscaler_problem: tuple[str, str] | None = None,
    monitoring_wanted: tuple[ChildKind, ...] = (),
    skipped: tuple[ChildKind, ...] = (),
) -> Observed:
    """Conditions and replica counts from the live Deployment, pods and autoscaler (an HPA or a
    ScaledObject). `monitoring_wanted`: the monitoring kinds the spec asks for; `skipped`: the
    kinds left out because their CRD is missing."""
    rollout = rollout_state(deployment)
    if autoscaling_wanted and not suspended and autoscaler is not None and rollout.exists:
        rollout = _with_desired(rollout, autoscaled_desired(autoscaler, rollout.desired))
    failure = pods_failure(pods)
    if failure is not None:
        pods_healthy = Condition(PODS_HEALTHY, "False", failure.reason, failure.message)
    else:
        pods_healthy = Condition(PODS_HEALTHY, "True", "PodsHealthy", "no pod is failing")
    conditions = [
        _ready_condition(rollout, failure, suspended),
        _progressing_condition(rollout),
        pods_healthy,
        autoscaler_condition(
            wanted=autoscaling_wanted,
            suspended=suspended,
            autoscaler=autoscaler,
            problem=autoscaler_problem,
        ),
        _monitoring_condition(monitoring_wanted, skipped),
    ]
    return Observed(
        conditions=conditions,
        replicas=rollout.replicas,
        ready_replicas=rollout.ready,
        updated_replicas=rollout.updated,
        desired_replicas=rollout.desired,
    )


_APPLIED_REASONS = {
    (SERVICE_MONITOR,): "ServiceMonitorApplied",
    (PROMETHEUS_RULE,): "PrometheusRuleApplied",
    (SERVICE_MONITOR, PROMETHEUS_RULE): "MonitoringApplied",
}


def _monitoring_condition(
    wanted: tuple[ChildKind, ...], skipped: tuple[ChildKind, ...]
) -> Condition:
    if not wanted:
        return Condition(
            MONITORING_READY,
            "True",
            "Disabled",
            "spec.monitoring.serviceMonitor is false and spec.slo is not set",
        )
    missing = [kind for kind in wanted if kind in skipped]
    if missing:
        words = "; ".join(kind.absent() for kind in missing)
        return Condition(MONITORING_READY, "False", CRD_NOT_INSTALLED, words)
    exist = " and the ".join(kind.kind for kind in wanted)
    verb = "exists" if len(wanted) == 1 else "exist"
    return Condition(MONITORING_READY, "True", _APPLIED_REASONS[wanted], f"the {exist} {verb}")
