"""The failure taxonomy and status conditions, from hand-written live objects (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane_operator.conditions import Condition, merge_conditions
from modelplane_operator.diagnose import (
    CRASH_LOOP_BACK_OFF,
    IMAGE_PULL_BACK_OFF,
    INSUFFICIENT_GPU,
    OOM_KILLED,
    STARTUP_TIMEOUT,
    UNSCHEDULABLE,
    observe,
    pods_failure,
)
from modelplane_operator.kinds import PROMETHEUS_RULE, SERVICE_MONITOR


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def waiting(reason: str, message: str = "", last: dict[str, Any] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "server", "state": {"waiting": {"reason": reason}}}
    if message:
        container["state"]["waiting"]["message"] = message
    if last is not None:
        container["lastState"] = {"terminated": last}
    return container


UNSCHEDULABLE_GPU = pod(
    "demo-abc",
    phase="Pending",
    conditions=[
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
        }
    ],
)


@pytest.mark.parametrize(
    ("pods", "reason", "fragment"),
    [
        ([UNSCHEDULABLE_GPU], INSUFFICIENT_GPU, "pod demo-abc is Pending: 0/4 nodes"),
        (
            [
                pod(
                    "demo-x",
                    conditions=[
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/4 nodes are available: 4 node(s) had untolerated taint",
                        }
                    ],
                )
            ],
            UNSCHEDULABLE,
            "untolerated taint",
        ),
        (
            [pod("demo-y", containerStatuses=[waiting("ImagePullBackOff", "back-off pulling")])],
            IMAGE_PULL_BACK_OFF,
            "pod demo-y: container server cannot pull its image: back-off pulling",
        ),
        (
            [pod("demo-z", containerStatuses=[waiting("ErrImagePull")])],
            IMAGE_PULL_BACK_OFF,
            "demo-z",
        ),
        (
            [pod("demo-c", containerStatuses=[waiting("CrashLoopBackOff", last={"exitCode": 3})])],
            CRASH_LOOP_BACK_OFF,
            "last exit code 3",
        ),
        (
            [
                pod(
                    "demo-o",
                    containerStatuses=[
                        waiting("CrashLoopBackOff", last={"exitCode": 137, "reason": "OOMKilled"})
                    ],
                )
            ],
            OOM_KILLED,
            "pod demo-o: container server was OOMKilled (exit code 137)",
        ),
        (
            [
                pod(
                    "demo-i",
                    initContainerStatuses=[waiting("CrashLoopBackOff", last={"exitCode": 1})],
                )
            ],
            CRASH_LOOP_BACK_OFF,
            "demo-i",
        ),
    ],
)
def test_pod_failures(pods: list[dict[str, Any]], reason: str, fragment: str) -> None:
    failure = pods_failure(pods)
    assert failure is not None
    assert failure.reason == reason
    assert fragment in failure.message


def test_healthy_and_terminating_pods_report_nothing() -> None:
    terminating = dict(UNSCHEDULABLE_GPU)
    terminating["metadata"] = {"name": "old", "deletionTimestamp": "2026-01-01T00:00:00Z"}
    running = pod("ok", containerStatuses=[{"name": "server", "state": {"running": {}}}])
    assert pods_failure([terminating, running]) is None


def test_root_cause_wins_over_symptoms() -> None:
    crash = pod("a", containerStatuses=[waiting("CrashLoopBackOff")])
    assert pods_failure([UNSCHEDULABLE_GPU, crash]).reason == CRASH_LOOP_BACK_OFF  # type: ignore[union-attr]


def deployment(
    desired: int, ready: int, updated: int | None = None, **status: Any
) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": 2,
            "replicas": desired,
            "readyReplicas": ready,
            "updatedReplicas": desired if updated is None else updated,
            **status,
        },
    }


def conditions_of(**kwargs: Any) -> dict[str, tuple[str, str]]:
    arguments: dict[str, Any] = {
        "pods": [],
        "suspended": False,
        "autoscaling_wanted": False,
        "autoscaler": None,
        **kwargs,
    }
    observed = observe(**arguments)
    return {c.type: (c.status, c.reason) for c in observed.conditions}


def test_ready_when_all_replicas_ready() -> None:
    conditions = conditions_of(deployment=deployment(2, 2))
    assert conditions["Ready"] == ("True", "Serving")
    assert conditions["Progressing"] == ("True", "RolloutComplete")
    assert conditions["PodsHealthy"] == ("True", "PodsHealthy")
    assert conditions["AutoscalerReady"] == ("True", "NotRequested")
    assert conditions["MonitoringReady"] == ("True", "Disabled")


def test_not_ready_names_the_failure() -> None:
    conditions = conditions_of(deployment=deployment(1, 0), pods=[UNSCHEDULABLE_GPU])
    assert conditions["Ready"] == ("False", INSUFFICIENT_GPU)
    assert conditions["PodsHealthy"] == ("False", INSUFFICIENT_GPU)


def test_progress_deadline_is_a_startup_timeout() -> None:
    stalled = deployment(
        1,
        0,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet demo-1 has timed out progressing.",
            }
        ],
    )
    conditions = conditions_of(deployment=stalled)
    assert conditions["Ready"] == ("False", STARTUP_TIMEOUT)
    assert conditions["Progressing"] == ("False", STARTUP_TIMEOUT)


def test_suspended_is_ready_at_zero() -> None:
    conditions = conditions_of(deployment=deployment(0, 0), suspended=True)
    assert conditions["Ready"] == ("True", "Suspended")


def test_rollout_in_progress_is_not_ready() -> None:
    conditions = conditions_of(deployment=deployment(2, 2, updated=1))
    assert conditions["Ready"] == ("False", "Starting")
    assert conditions["Progressing"] == ("True", "RollingOut")


def hpa_failing(message: str) -> dict[str, Any]:
    """An HPA that can scale but cannot read its metric, saying `message`."""
    return {
        "status": {
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "reason": "FailedGetPodsMetric",
                    "message": message,
                },
            ]
        }
    }


def test_autoscaler_and_monitoring_conditions() -> None:
    hpa = hpa_failing("unable to get metric modelplane_queue_depth")
    conditions = conditions_of(
        deployment=deployment(1, 1),
        autoscaling_wanted=True,
        autoscaler=hpa,
        monitoring_wanted=(SERVICE_MONITOR,),
        skipped=(SERVICE_MONITOR,),
    )
    assert conditions["AutoscalerReady"] == ("False", "FailedGetPodsMetric")
    assert conditions["MonitoringReady"] == ("False", "CRDNotInstalled")
    assert conditions["Ready"] == ("True", "Serving")


HPA_PREFIX = (
    "the HPA was unable to compute the replica count: unable to get metric "
    "modelplane_queue_depth: unable to fetch metrics from custom metrics API: "
)


@pytest.mark.parametrize(
    ("cause", "reason", "words"),
    [
        (
            "no custom metrics API (custom.metrics.k8s.io) registered",
            "MetricsAPIMissing",
            "no adapter serves custom.metrics.k8s.io",
        ),
        (
            "the server could not find the metric modelplane_queue_depth for pods",
            "MetricMissing",
            "Prometheus returned no series for modelplane_queue_depth",
        ),
        (
            "the server is currently unable to handle the request "
            "(get pods.custom.metrics.k8s.io *)",
            "MetricsAPIUnavailable",
            "the adapter behind custom.metrics.k8s.io does not answer",
        ),
    ],
)
def test_a_missing_metric_is_said_in_words_with_the_hpas_message(
    cause: str, reason: str, words: str
) -> None:
    observed = observe(
        deployment=deployment(1, 1),
        pods=[],
        suspended=False,
        autoscaling_wanted=True,
        autoscaler=hpa_failing(HPA_PREFIX + cause),
    )
    (condition,) = [c for c in observed.conditions if c.type == "AutoscalerReady"]
    assert (condition.status, condition.reason) == ("False", reason)
    assert condition.message.startswith(words)
    assert condition.message.endswith(f"(HPA: {HPA_PREFIX}{cause})")


@pytest.mark.parametrize(
    ("hpa_status", "deployment_replicas", "desired"),
    [
        ({}, 1, 2),  # not acted yet: the floor it will enforce, not the Deployment's default 1
        ({"desiredReplicas": 0}, 1, 2),  # a fresh HPA's zero means "not computed", not 0
        ({"desiredReplicas": 3, "conditions": [{"type": "ScalingActive"}]}, 2, 3),
        ({"desiredReplicas": 9, "conditions": [{"type": "ScalingActive"}]}, 4, 4),  # max
    ],
)
def test_desired_replicas_under_an_hpa_are_the_hpas(
    hpa_status: dict[str, Any], deployment_replicas: int, desired: int
) -> None:
    """`kubectl get md` says 1/2, not 1/1, for minReplicas 2 before the HPA first acts."""
    hpa = {"spec": {"minReplicas": 2, "maxReplicas": 4}, "status": hpa_status}
    observed = observe(
        deployment=deployment(deployment_replicas, deployment_replicas),
        pods=[],
        suspended=False,
        autoscaling_wanted=True,
        autoscaler=hpa,
    )
    assert observed.desired_replicas == desired
    ready = next(c for c in observed.conditions if c.type == "Ready")
    if desired == deployment_replicas:
        assert (ready.status, ready.reason) == ("True", "Serving")
    else:
        assert (ready.status, ready.reason) == ("False", "Starting")
        assert f"{deployment_replicas}/{desired} replicas ready" in ready.message


def test_transition_time_kept_while_status_unchanged() -> None:
    def observed(ready_replicas: int) -> list[Condition]:
        return observe(
            deployment=deployment(1, ready_replicas),
            pods=[],
            suspended=False,
            autoscaling_wanted=False,
            autoscaler=None,
        ).conditions

    before = merge_conditions([], observed(0), 1, "2026-01-01T00:00:00Z")
    again = merge_conditions(before, observed(0), 1, "2026-01-01T00:05:00Z")
    assert again == before
    after = {c["type"]: c for c in merge_conditions(before, observed(1), 1, "T2")}
    assert after["Ready"]["lastTransitionTime"] == "T2"
    assert after["PodsHealthy"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("wanted", "skipped", "expected"),
    [
        ((), (), ("True", "Disabled")),
        ((SERVICE_MONITOR,), (), ("True", "ServiceMonitorApplied")),
        ((PROMETHEUS_RULE,), (), ("True", "PrometheusRuleApplied")),
        ((SERVICE_MONITOR, PROMETHEUS_RULE), (), ("True", "MonitoringApplied")),
        ((SERVICE_MONITOR, PROMETHEUS_RULE), (PROMETHEUS_RULE,), ("False", "CRDNotInstalled")),
        ((SERVICE_MONITOR,), (PROMETHEUS_RULE,), ("True", "ServiceMonitorApplied")),
    ],
)
def test_monitoring_ready_covers_every_monitoring_kind_the_spec_asks_for(
    wanted: tuple[Any, ...], skipped: tuple[Any, ...], expected: tuple[str, str]
) -> None:
    conditions = conditions_of(
        deployment=deployment(1, 1), monitoring_wanted=wanted, skipped=skipped
    )
    assert conditions["MonitoringReady"] == expected
