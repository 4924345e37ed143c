"""reconcile() and the Reconciler against an in-memory API (no cluster): what gets applied,
deleted and written, the invalid-spec path, the work queue (coalescing, retries) and its error
policy."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from fakekube import FakeKube, as_kube, bound_pod, gpu_node
from modelplane_operator import metrics
from modelplane_operator.kube import Kube
from modelplane_operator.names import LABEL_INSTANCE, LABEL_MANAGED_BY
from modelplane_operator.reconcile import (
    InvalidSpecError,
    Reads,
    Reconciler,
    ready_event,
    reconcile,
    retry_delay,
)

UID = "11111111-2222-3333-4444-555555555555"
Key = tuple[str, str, str]


def body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "demo", "namespace": "models", "uid": UID, "generation": 1},
        "spec": {"model": {"uri": "hf://org/model"}, **spec},
    }


def kinds(fake: FakeKube) -> set[str]:
    return {kind for kind, _, _ in fake.objects}


async def test_first_reconcile_applies_children_and_writes_status() -> None:
    fake = FakeKube(body(replicas=2))
    outcome = await reconcile(as_kube(fake), fake.body)
    assert kinds(fake) == {"Deployment", "Service", "PodDisruptionBudget"}
    assert outcome.status_written
    status = fake.body["status"]
    assert status["observedGeneration"] == 1
    assert status["ready"] == "0/2"
    assert status["url"] == "http://demo.models.svc/v1"
    assert status["resolved"]["desiredReplicas"] == 2
    assert [c["type"] for c in status["conditions"]] == [
        "Ready",
        "Progressing",
        "PodsHealthy",
        "AutoscalerReady",
        "MonitoringReady",
    ]


async def test_converged_reconcile_writes_nothing() -> None:
    fake = FakeKube(body(replicas=2))
    await reconcile(as_kube(fake), fake.body)
    fake.writes.clear()
    outcome = await reconcile(as_kube(fake), fake.body)
    assert outcome.writes == 0
    assert fake.writes == []


async def test_children_no_longer_wanted_are_deleted_but_only_our_own() -> None:
    fake = FakeKube(body(autoscaling={"maxReplicas": 3, "targetQueueDepth": 2}))
    await reconcile(as_kube(fake), fake.body)
    assert "HorizontalPodAutoscaler" in kinds(fake)
    stranger = copy.deepcopy(fake.objects[("HorizontalPodAutoscaler", "models", "demo")])
    stranger["metadata"]["name"] = "someone-elses"
    stranger["metadata"]["ownerReferences"][0]["uid"] = "other"
    fake.objects[("HorizontalPodAutoscaler", "models", "someone-elses")] = stranger
    fake.body["spec"]["suspend"] = True
    outcome = await reconcile(as_kube(fake), fake.body)
    assert sorted(outcome.deleted) == ["HorizontalPodAutoscaler/demo", "PodDisruptionBudget/demo"]
    assert ("HorizontalPodAutoscaler", "models", "someone-elses") in fake.objects
    assert fake.objects[("Deployment", "models", "demo")]["spec"]["replicas"] == 0
    labels = fake.objects[("Deployment", "models", "demo")]["metadata"]["labels"]
    assert labels[LABEL_MANAGED_BY] == "modelplane-operator"


async def test_a_child_of_a_wanted_kind_under_an_unwanted_name_is_deleted() -> None:
    """Children are told apart by (kind, name): a second Service of ours (say, a variant's that
    is no longer wanted) goes, while the wanted one of the same kind stays untouched."""
    fake = FakeKube(body(replicas=1))
    await reconcile(as_kube(fake), fake.body)
    extra = copy.deepcopy(fake.objects[("Service", "models", "demo")])
    extra["metadata"]["name"] = "demo-canary"
    fake.objects[("Service", "models", "demo-canary")] = extra
    outcome = await reconcile(as_kube(fake), fake.body)
    assert outcome.deleted == ["Service/demo-canary"]
    assert outcome.applied == []
    assert ("Service", "models", "demo") in fake.objects


async def test_invalid_spec_becomes_a_condition_and_an_error() -> None:
    fake = FakeKube(body(replicas=1, autoscaling={"maxReplicas": 2, "targetQueueDepth": 1}))
    with pytest.raises(InvalidSpecError, match=r"spec\.replicas and spec\.autoscaling"):
        await reconcile(as_kube(fake), fake.body)
    (ready,) = fake.body["status"]["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "InvalidSpec")
    assert fake.objects == {}


def ready(status: str, reason: str, message: str = "") -> list[dict[str, Any]]:
    return [{"type": "Ready", "status": status, "reason": reason, "message": message}]


@pytest.mark.parametrize(
    ("before", "after", "event"),
    [
        ([], ready("False", "Creating"), None),  # progress is not news
        (ready("False", "Creating"), ready("False", "InsufficientGPU", "pod x is Pending"),
         ("Warning", "InsufficientGPU", "pod x is Pending")),
        (ready("False", "InsufficientGPU", "a"), ready("False", "InsufficientGPU", "b"), None),
        (ready("False", "InsufficientGPU"), ready("False", "OOMKilled", "pod y: OOMKilled"),
         ("Warning", "OOMKilled", "pod y: OOMKilled")),
        (ready("False", "Progressing"), ready("True", "Available", "2/2 ready"),
         ("Normal", "Ready", "2/2 ready")),
        (ready("True", "Available"), ready("True", "Available"), None),
        (ready("True", "Available"), ready("False", "Progressing"), None),
    ],
)  # fmt: skip
def test_ready_changes_that_deserve_an_event(
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    event: tuple[str, str, str] | None,
) -> None:
    assert ready_event(before, after) == event


async def test_an_invalid_spec_posts_one_warning_event_not_one_per_reconcile() -> None:
    fake = FakeKube(body(replicas=1, autoscaling={"maxReplicas": 2, "targetQueueDepth": 1}))
    for _ in range(3):
        with pytest.raises(InvalidSpecError):
            await reconcile(as_kube(fake), fake.body)
    assert [(kind, reason) for kind, reason, _ in fake.events] == [("Warning", "InvalidSpec")]
    assert "spec.replicas and spec.autoscaling" in fake.events[0][2]


async def run_until_idle(reconciler: Reconciler) -> None:
    """Run the workers until nothing is queued or running (polled: the queue has no event)."""
    worker = asyncio.create_task(reconciler.run())
    try:
        async with asyncio.timeout(5):
            await asyncio.sleep(0.05)
            while not reconciler.idle:  # noqa: ASYNC110  # a test poll, not production code
                await asyncio.sleep(0.01)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


async def test_a_burst_of_triggers_becomes_one_reconcile_and_counts_metrics() -> None:
    fake = FakeKube(body())
    reconciler = Reconciler(as_kube(fake), debounce_seconds=0.05)
    before = metrics.RECONCILES.labels(result="success")._value.get()
    for _ in range(50):
        reconciler.enqueue("models", "demo")
    await run_until_idle(reconciler)
    # One applies the children and leaves status to the next, which writes it; 50 triggers, 2 runs.
    assert fake.reconciles == 2
    assert fake.writes.count("status") == 1
    assert metrics.RECONCILES.labels(result="success")._value.get() == before + 2
    assert metrics.MANAGED.labels(ready="False")._value.get() >= 1
    reconciler.forget("models", "demo")


async def test_child_events_during_a_reconcile_run_it_once_more_not_alongside() -> None:
    fake = FakeKube(body())
    reconciler = Reconciler(as_kube(fake), workers=4)
    running = asyncio.create_task(run_until_idle(reconciler))
    reconciler.enqueue("models", "demo")
    await asyncio.sleep(0.005)  # the first reconcile is under way
    for version in range(1, 40):  # a burst of pod events for the same owner
        pod = {
            "metadata": {
                "name": "demo-abc",
                "namespace": "models",
                "resourceVersion": str(version),
                "labels": {LABEL_INSTANCE: "demo"},
            },
            "status": {"phase": "Pending"},
        }
        reconciler.notice("v1", "Pod", "MODIFIED", pod)
    await running
    assert fake.reconciles == 2
    # The echo of an object the cache already holds queues nothing.
    reconciler.notice("v1", "Pod", "MODIFIED", pod)
    assert reconciler.idle
    reconciler.forget("models", "demo")


async def test_failed_reconciles_are_retried_after_the_delay_invalid_specs_are_not() -> None:
    fake = FakeKube(body())
    fake.fail_next = [api_error(500, "etcd timeout")]
    reconciler = Reconciler(as_kube(fake), retry_delay_seconds=0.05)
    reconciler.enqueue("models", "demo")
    await run_until_idle(reconciler)
    assert fake.reconciles == 3  # failed, retried (children applied), status
    assert "status" in fake.writes

    invalid = FakeKube(body(replicas=1, autoscaling={"maxReplicas": 2, "targetQueueDepth": 1}))
    reconciler = Reconciler(as_kube(invalid), retry_delay_seconds=0.05)
    reconciler.enqueue("models", "demo")
    await run_until_idle(reconciler)
    assert invalid.reconciles == 1
    assert invalid.body["status"]["conditions"][0]["reason"] == "InvalidSpec"
    reconciler.forget("models", "demo")


async def test_first_reconcile_reads_the_api_unless_nothing_reconciled_it_before() -> None:
    seen: list[Reads] = []

    class Recording(FakeKube):
        async def list_pods(
            self, namespace: str, labels: dict[str, str], *, cached: bool = False
        ) -> list[dict[str, Any]]:
            seen.append(Reads.CACHE if cached else Reads.API)
            return []

    fake = Recording(body())
    reconciler = Reconciler(as_kube(fake))
    first = await reconciler.reconcile_key("models", "demo")  # no status yet: nothing to read
    assert first is not None
    assert first.status_deferred  # it applied the children; status waits for the next
    await reconciler.reconcile_key("models", "demo")
    reconciler.forget("models", "demo")
    restarted = Reconciler(as_kube(fake))  # status exists: a new process reads the API once
    await restarted.reconcile_key("models", "demo")
    await restarted.reconcile_key("models", "demo")
    assert seen == [Reads.CACHE, Reads.API, Reads.CACHE]


async def test_deleted_or_deleting_resources_are_left_to_garbage_collection() -> None:
    fake = FakeKube(body())
    fake.body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert await Reconciler(as_kube(fake)).reconcile_key("models", "demo") is None
    assert fake.writes == []


def api_error(code: int, message: str) -> ApiError:
    return ApiError(status=Status(code=code, message=message))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (InvalidSpecError("spec.replicas: bad"), None),
        (api_error(500, "etcd timeout"), 2),
        (api_error(409, "conflict"), 2),
        (
            api_error(
                403, "unable to create new content in namespace x because it is being terminated"
            ),
            None,
        ),
        (api_error(404, 'namespaces "x" not found'), None),
        (ConnectionError("reset"), 2),
    ],
)
def test_error_policy(error: Exception, expected: float | None) -> None:
    assert retry_delay(error, 2) == expected


class ConflictOnce:
    def __init__(self) -> None:
        self.calls = 0

    async def patch(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise api_error(409, "the object has been modified")
        return FakeResult()


class FakeResult:
    def to_dict(self) -> dict[str, Any]:
        return {"kind": "Service"}


async def test_conflicts_are_retried_quickly_in_one_place() -> None:
    client = ConflictOnce()
    kube = Kube(client, conflict_delay_seconds=0)  # type: ignore[arg-type]
    manifest = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "b"}}
    assert await kube.apply(manifest) == {"kind": "Service"}
    assert client.calls == 2


LEGACY_SELECTOR = {
    "app.kubernetes.io/name": "modelplane-server",
    "app.kubernetes.io/instance": "demo",
}


def legacy_replica_set(replicas: int) -> dict[str, Any]:
    """What a Deployment made before the variant label leaves behind once deleted as an orphan."""
    labels = {**LEGACY_SELECTOR, LABEL_MANAGED_BY: "modelplane-operator"}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "demo-5d4f", "namespace": "models", "labels": labels},
        "spec": {"replicas": replicas, "template": {"metadata": {"labels": labels}}},
    }


def pod(labels: dict[str, str], *, ready: bool = True, unschedulable: bool = False) -> Any:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable"})
    return {"metadata": {"name": "p", "labels": labels}, "status": {"conditions": conditions}}


async def test_a_deployment_selecting_without_the_variant_is_replaced_leaving_its_pods() -> None:
    fake = FakeKube(body(replicas=3))
    await reconcile(as_kube(fake), fake.body)
    legacy = fake.objects[("Deployment", "models", "demo")]
    legacy["spec"]["selector"] = {"matchLabels": dict(LEGACY_SELECTOR)}
    fake.writes.clear()
    # The selector is immutable: orphan-delete (its ReplicaSet keeps serving), create next time.
    outcome = await reconcile(as_kube(fake), fake.body)
    assert fake.writes[0] == "delete Deployment (orphan)"
    assert "apply Deployment" not in fake.writes
    assert outcome.deleted == ["Deployment/demo"]
    fake.writes.clear()
    await reconcile(as_kube(fake), fake.body)
    assert "apply Deployment" in fake.writes
    selector = fake.objects[("Deployment", "models", "demo")]["spec"]["selector"]
    assert selector["matchLabels"]["modelplane.io/variant"] == "stable"


@pytest.mark.parametrize(
    ("ready", "pending", "expected"),
    [(0, False, ["scale ReplicaSet 3"]), (1, False, ["scale ReplicaSet 2"]),
     (1, True, ["scale ReplicaSet 1"]), (3, False, ["delete ReplicaSet"])],
)  # fmt: skip
async def test_the_orphaned_replica_set_shrinks_as_new_pods_become_ready(
    ready: int, pending: bool, expected: list[str]
) -> None:
    fake = FakeKube(body(replicas=3))
    await reconcile(as_kube(fake), fake.body)
    fake.objects[("ReplicaSet", "models", "demo-5d4f")] = legacy_replica_set(4)
    deployment = fake.objects[("Deployment", "models", "demo")]
    deployment["status"] = {"replicas": 3, "readyReplicas": ready}
    new_labels = deployment["spec"]["template"]["metadata"]["labels"]
    fake.pods = [pod(LEGACY_SELECTOR), pod(new_labels, unschedulable=pending)]
    fake.writes.clear()
    await reconcile(as_kube(fake), fake.body)
    assert [write for write in fake.writes if "ReplicaSet" in write] == expected
    # Once no pod lacks the variant label, ReplicaSets are not even listed.
    fake.pods = [pod(new_labels)]
    fake.writes.clear()
    await reconcile(as_kube(fake), fake.body)
    assert not [write for write in fake.writes if "ReplicaSet" in write]


CANARY = {
    "image": "server:2",
    "steps": [{"weight": 20, "pause": "5m"}],
    "traffic": {"header": {"name": "x-canary", "value": "true"}},
}
ROUTE = {"parentRefs": [{"name": "gateway", "namespace": "infra"}], "hostnames": ["chat.test"]}


def make_ready(fake: FakeKube, name: str) -> None:
    deployment = fake.objects[("Deployment", "models", name)]
    replicas = deployment["spec"]["replicas"]
    deployment["status"] = {
        "replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas
    }  # fmt: skip


def route_rules(fake: FakeKube) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = fake.objects[("HTTPRoute", "models", "demo")]["spec"]["rules"]
    return rules


async def test_a_canary_gets_weight_and_the_header_rule_only_once_ready() -> None:
    fake = FakeKube(body(replicas=4, route=ROUTE, canary=CANARY), prometheus=True)
    clock = iter(["2026-12-07T10:00:00Z"] * 3 + ["2026-12-07T10:01:00Z"] * 3)
    await reconcile(as_kube(fake), fake.body, now=lambda: next(clock))
    names = {(kind, name) for kind, _, name in fake.objects}
    assert {("Deployment", "demo-canary"), ("Service", "demo-stable"), ("Service", "demo-canary"),
            ("HTTPRoute", "demo")} <= names  # fmt: skip
    canary = fake.objects[("Deployment", "models", "demo-canary")]
    assert canary["spec"]["selector"]["matchLabels"]["modelplane.io/variant"] == "canary"
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == "server:2"
    assert canary["spec"]["replicas"] == 1
    assert route_rules(fake) == [
        {"backendRefs": [{"name": "demo-stable", "port": 80, "weight": 100},
                         {"name": "demo-canary", "port": 80, "weight": 0}]}
    ]  # fmt: skip
    assert fake.body["status"]["canary"]["summary"] == "starting"
    make_ready(fake, "demo-canary")
    outcome = await reconcile(as_kube(fake), fake.body, now=lambda: next(clock))
    header_rule, weighted = route_rules(fake)
    assert header_rule["matches"] == [
        {"headers": [{"type": "Exact", "name": "x-canary", "value": "true"}]}
    ]
    assert [backend["weight"] for backend in weighted["backendRefs"]] == [80, 20]
    status = fake.body["status"]
    assert status["canary"]["weight"] == 20
    assert status["canary"]["summary"] == "20% step 1/1"
    split = next(item for item in status["conditions"] if item["type"] == "TrafficSplit")
    assert (split["status"], split["reason"]) == ("True", "Gateway")
    assert outcome.requeue_after == 300
    # Converged: nothing to write until the pause is over.
    fake.writes.clear()
    await reconcile(as_kube(fake), fake.body, now=lambda: "2026-12-07T10:02:00Z")
    assert fake.writes == []


async def test_removing_the_canary_removes_it_at_once() -> None:
    fake = FakeKube(body(replicas=4, route=ROUTE, canary=CANARY), prometheus=True)
    await reconcile(as_kube(fake), fake.body)
    make_ready(fake, "demo-canary")
    await reconcile(as_kube(fake), fake.body)
    del fake.body["spec"]["canary"]
    await reconcile(as_kube(fake), fake.body)
    assert ("Deployment", "models", "demo-canary") not in fake.objects
    assert ("Service", "models", "demo-canary") not in fake.objects
    assert route_rules(fake) == [
        {"backendRefs": [{"name": "demo-stable", "port": 80, "weight": 100}]}
    ]
    assert "canary" not in fake.body["status"]
    assert ("Normal", "CanaryRemoved", "spec.canary was removed: canary deleted") in fake.events


async def test_without_a_route_the_split_is_by_replica_ratio_and_says_so() -> None:
    fake = FakeKube(body(replicas=4, canary={"traffic": {"weight": 20}}), prometheus=True)
    await reconcile(as_kube(fake), fake.body)
    assert ("HTTPRoute", "models", "demo") not in fake.objects
    assert fake.objects[("Deployment", "models", "demo-canary")]["spec"]["replicas"] == 1
    make_ready(fake, "demo-canary")
    await reconcile(as_kube(fake), fake.body)
    status = fake.body["status"]
    assert status["canary"]["split"] == "ReplicaRatio"
    assert status["canary"]["weight"] == 20  # 1 of 5 ready pods
    split = next(item for item in status["conditions"] if item["type"] == "TrafficSplit")
    assert (split["status"], split["reason"]) == ("False", "ApproximateSplit")
    assert "spec.route is not set" in split["message"]


async def test_with_every_gpu_taken_stable_lends_a_replica_and_the_canary_never_pends() -> None:
    fake = FakeKube(
        body(replicas=2, accelerator={"count": 8}, canary={"image": "server:2"}), prometheus=True
    )
    fake.nodes = [gpu_node("gpu-0", 8), gpu_node("gpu-1", 8)]
    fake.bound = [bound_pod("gpu-0", 8, "stable"), bound_pod("gpu-1", 8, "stable")]
    await reconcile(as_kube(fake), fake.body)
    # Stable shrinks first; the canary gets no pod until a GPU is really free.
    assert fake.objects[("Deployment", "models", "demo")]["spec"]["replicas"] == 1
    assert fake.objects[("Deployment", "models", "demo-canary")]["spec"]["replicas"] == 0
    capacity = next(c for c in fake.body["status"]["conditions"] if c["type"] == "GPUCapacity")
    assert (capacity["status"], capacity["reason"]) == ("False", "Borrowing"), capacity
    assert "stable lends 1 replica(s)" in capacity["message"]
    # Still draining: nothing more is lent, the canary still waits.
    await reconcile(as_kube(fake), fake.body)
    assert fake.body["status"]["canary"]["borrowed"] == 1
    assert fake.objects[("Deployment", "models", "demo-canary")]["spec"]["replicas"] == 0
    # The stable pod is gone: its GPUs go to the canary; stable stays lent while the canary runs.
    fake.bound = fake.bound[:1]
    await reconcile(as_kube(fake), fake.body)
    assert fake.objects[("Deployment", "models", "demo")]["spec"]["replicas"] == 1
    assert fake.objects[("Deployment", "models", "demo-canary")]["spec"]["replicas"] == 1
    # The canary ends (removed): stable gets its replica back.
    del fake.body["spec"]["canary"]
    await reconcile(as_kube(fake), fake.body)
    assert fake.objects[("Deployment", "models", "demo")]["spec"]["replicas"] == 2


async def test_stable_never_lends_its_last_replica() -> None:
    fake = FakeKube(
        body(replicas=1, accelerator={"count": 8}, canary={"image": "server:2"}), prometheus=True
    )
    fake.nodes = [gpu_node("gpu-0", 8)]
    fake.bound = [bound_pod("gpu-0", 8, "stable")]
    await reconcile(as_kube(fake), fake.body)
    assert fake.objects[("Deployment", "models", "demo")]["spec"]["replicas"] == 1
    assert fake.objects[("Deployment", "models", "demo-canary")]["spec"]["replicas"] == 0
    capacity = next(c for c in fake.body["status"]["conditions"] if c["type"] == "GPUCapacity")
    assert (capacity["status"], capacity["reason"]) == ("False", "GPUsFull"), capacity
    assert "the canary runs 0 of 1" in capacity["message"]


async def test_a_rolling_update_with_every_gpu_taken_replaces_in_place_not_by_surge() -> None:
    fake = FakeKube(body(replicas=2, accelerator={"count": 8}), prometheus=True)
    fake.nodes = [gpu_node("gpu-0", 8), gpu_node("gpu-1", 8)]
    fake.bound = [bound_pod("gpu-0", 8, "stable"), bound_pod("gpu-1", 8, "stable")]
    await reconcile(as_kube(fake), fake.body)
    make_ready(fake, "demo")

    def strategy() -> dict[str, Any]:
        deployment = fake.objects[("Deployment", "models", "demo")]
        rolling: dict[str, Any] = deployment["spec"]["strategy"]["rollingUpdate"]
        return rolling

    assert strategy() == {"maxSurge": 1, "maxUnavailable": 0}
    fake.body["spec"]["image"] = "server:2"
    await reconcile(as_kube(fake), fake.body)
    assert strategy() == {"maxSurge": 0, "maxUnavailable": 1}
    # Mid-rollout a GPU frees (an old pod ended): the rollout goes on as it began.
    fake.bound = fake.bound[:1]
    fake.objects[("Deployment", "models", "demo")]["status"] = {
        "replicas": 2, "readyReplicas": 1, "updatedReplicas": 1
    }  # fmt: skip
    await reconcile(as_kube(fake), fake.body)
    assert strategy() == {"maxSurge": 0, "maxUnavailable": 1}
    make_ready(fake, "demo")
    await reconcile(as_kube(fake), fake.body)
    assert strategy() == {"maxSurge": 1, "maxUnavailable": 0}
    # With a GPU free, the next rollout surges as the spec says.
    fake.body["spec"]["image"] = "server:3"
    await reconcile(as_kube(fake), fake.body)
    assert strategy() == {"maxSurge": 1, "maxUnavailable": 0}


class FakePrometheus:
    """Answers the analysis' queries: samples for both variants, an error ratio per variant."""

    def __init__(self, ratios: dict[str, float]) -> None:
        self.ratios = ratios

    async def value(self, query: str) -> float:
        variant = "canary" if 'variant="canary"' in query else "stable"
        if query.startswith("sum(increase("):
            return 500.0
        return self.ratios[variant]


async def test_a_rollback_decided_while_children_change_is_written_at_once_and_sticks() -> None:
    canary = {
        "image": "server:2",
        "steps": [{"weight": 50, "analysis": True}],
        "analysis": {"interval": "1m", "checks": [
            {"name": "errors", "metric": "ErrorRatio", "maxIncrease": 0.01}
        ]},
    }  # fmt: skip
    fake = FakeKube(body(replicas=2, route=ROUTE, canary=canary), prometheus=True)
    prometheus: Any = FakePrometheus({"canary": 0.4, "stable": 0.0})
    await reconcile(as_kube(fake), fake.body, now=lambda: "2026-12-07T10:00:00Z")
    make_ready(fake, "demo-canary")
    await reconcile(as_kube(fake), fake.body, now=lambda: "2026-12-07T10:00:05Z")
    assert fake.body["status"]["canary"]["weight"] == 50
    # The window fails: weight 0 and the canary deleted (child writes), and the decision is in
    # status in the same reconcile, though status writes are otherwise deferred after children.
    outcome = await reconcile(
        as_kube(fake),
        fake.body,
        now=lambda: "2026-12-07T10:01:10Z",
        defer_status=True,
        prometheus=prometheus,
    )
    assert not outcome.status_deferred
    assert fake.body["status"]["canary"]["phase"] == "RolledBack"
    assert ("Deployment", "models", "demo-canary") not in fake.objects
    kind, reason, message = fake.events[-1]
    assert (kind, reason) == ("Warning", "CanaryRolledBack")
    assert "errors: canary 0.4 exceeds stable 0 by 0.4" in message
    assert "canary 500 requests, stable 500" in message
    # And it sticks: nothing brings the canary back.
    fake.writes.clear()
    await reconcile(as_kube(fake), fake.body, now=lambda: "2026-12-07T10:02:30Z")
    assert fake.writes == []
