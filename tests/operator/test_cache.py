"""The object cache and the reads it saves (no cluster): stale and echoed events, what is kept of
an object, the remembered CRD presence, and a whole reconcile from the cache against a fake API
client that counts every call."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from modelplane_operator.cache import ObjectCache
from modelplane_operator.kinds import OPTIONAL_CRDS
from modelplane_operator.kube import Kube
from modelplane_operator.models import API_VERSION, KIND
from modelplane_operator.names import LABEL_INSTANCE, LABEL_MANAGED_BY
from modelplane_operator.reconcile import Reads, reconcile

UID = "11111111-2222-3333-4444-555555555555"


def pod(version: str, phase: str = "Running") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "demo-abc",
            "namespace": "models",
            "resourceVersion": version,
            "labels": {LABEL_INSTANCE: "demo", LABEL_MANAGED_BY: "modelplane-operator"},
            "managedFields": [{"manager": "kubelet"}],
        },
        "spec": {"containers": [{"name": "server"}]},
        "status": {"phase": phase},
    }


def test_objects_are_kept_without_managed_fields_and_pods_without_spec() -> None:
    cache = ObjectCache()
    assert cache.put("v1", "Pod", pod("5"))
    held = cache.get("v1", "Pod", "models", "demo-abc")
    assert held is not None
    assert "managedFields" not in held["metadata"]
    assert "spec" not in held
    assert held["status"] == {"phase": "Running"}


def test_stale_and_echoed_events_change_nothing() -> None:
    cache = ObjectCache()
    assert cache.put("v1", "Pod", pod("7", "Running"))
    assert not cache.put("v1", "Pod", pod("7", "Running"))  # the echo of what we hold
    assert not cache.put("v1", "Pod", pod("6", "Pending"))  # older: arrived late
    assert cache.get("v1", "Pod", "models", "demo-abc")["status"]["phase"] == "Running"  # type: ignore[index]
    assert not cache.remove("v1", "Pod", pod("6"))  # a deletion older than what we hold
    assert cache.remove("v1", "Pod", pod("8"))
    assert cache.get("v1", "Pod", "models", "demo-abc") is None


def test_select_by_labels_within_one_instance() -> None:
    cache = ObjectCache()
    cache.put("v1", "Pod", pod("1"))
    other = pod("2")
    other["metadata"]["name"] = "other-abc"
    other["metadata"]["labels"] = {LABEL_INSTANCE: "other"}
    cache.put("v1", "Pod", other)
    selected = cache.select("v1", "Pod", "models", {LABEL_INSTANCE: "demo"})
    assert [item["metadata"]["name"] for item in selected] == ["demo-abc"]
    assert cache.select("v1", "Pod", "elsewhere", {LABEL_INSTANCE: "demo"}) == []
    relabelled = pod("3")
    relabelled["metadata"]["labels"] = {LABEL_INSTANCE: "other"}
    cache.put("v1", "Pod", relabelled)
    assert cache.select("v1", "Pod", "models", {LABEL_INSTANCE: "demo"}) == []


class Wrapped:
    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.item)


def not_found() -> ApiError:
    return ApiError(status=Status(code=404, message="not found"))


class FakeClient:
    """lightkube's AsyncClient as far as `Kube` uses it: objects in a dict, calls counted."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.version = 0

    @staticmethod
    def _kind(resource: Any) -> str:
        return str(resource._api_info.resource.kind)

    async def get(self, resource: Any, name: str, namespace: str | None = None) -> Wrapped:
        self.calls[f"get {self._kind(resource)}"] += 1
        found = self.objects.get((self._kind(resource), namespace or "", name))
        if found is None:
            raise not_found()
        return Wrapped(found)

    async def patch(
        self, resource: Any, name: str, body: dict[str, Any], namespace: str, **_: Any
    ) -> Wrapped:
        kind = self._kind(resource)
        subresource = resource._api_info.action
        self.calls[f"apply {kind}{'/' + subresource if subresource else ''}"] += 1
        self.version += 1
        key = (kind, namespace, name)
        merged = copy.deepcopy(self.objects.get(key, {})) if subresource else {}
        merged.update(copy.deepcopy(body))
        merged["metadata"] = {
            **self.objects.get(key, {}).get("metadata", {}),
            **body["metadata"],
            "resourceVersion": str(self.version),
        }
        self.objects[key] = merged
        return Wrapped(merged)

    async def delete(self, resource: Any, name: str, namespace: str) -> None:
        self.calls[f"delete {self._kind(resource)}"] += 1
        if self.objects.pop((self._kind(resource), namespace, name), None) is None:
            raise not_found()

    async def list(
        self, resource: Any, namespace: str, labels: dict[str, str]
    ) -> AsyncIterator[Wrapped]:
        self.calls[f"list {self._kind(resource)}"] += 1
        for (kind, item_namespace, _), item in list(self.objects.items()):
            item_labels = item["metadata"].get("labels") or {}
            if (
                kind == self._kind(resource)
                and item_namespace == namespace
                and all(item_labels.get(key) == value for key, value in labels.items())
            ):
                yield Wrapped(item)


def model_deployment(client: FakeClient, **spec: Any) -> dict[str, Any]:
    """A ModelDeployment that exists in the fake API."""
    body = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": "demo",
            "namespace": "models",
            "uid": UID,
            "generation": 1,
            "resourceVersion": "0",
        },
        "spec": {"model": {"uri": "hf://org/model"}, **spec},
    }
    client.objects[(KIND, "models", "demo")] = copy.deepcopy(body)
    return body


async def test_crd_presence_is_remembered_and_a_later_install_noticed_after_the_refresh() -> None:
    client = FakeClient()
    now = [0.0]
    kube = Kube(client, crd_refresh_seconds=30, clock=lambda: now[0])  # type: ignore[arg-type]
    name = "servicemonitors.monitoring.coreos.com"
    assert not await kube.crd_installed(name)
    client.objects[("CustomResourceDefinition", "", name)] = {"metadata": {"name": name}}
    now[0] = 29
    assert not await kube.crd_installed(name)  # remembered
    now[0] = 31
    assert await kube.crd_installed(name)  # noticed within the refresh period
    assert client.calls["get CustomResourceDefinition"] == 2


async def test_reconciles_from_the_cache_read_nothing_and_still_prune() -> None:
    client = FakeClient()
    kube = Kube(client, cache=ObjectCache(), crd_refresh_seconds=60)  # type: ignore[arg-type]
    body = model_deployment(client, autoscaling={"maxReplicas": 3, "targetQueueDepth": 2})
    assert kube.cache is not None
    kube.cache.put(API_VERSION, KIND, body)
    first = await reconcile(kube, body, reads=Reads.CACHE)
    assert sorted(first.applied) == [
        "Deployment/demo",
        "HorizontalPodAutoscaler/demo",
        "PodDisruptionBudget/demo",
        "Service/demo",
    ]
    assert first.status_written
    reads = {call: count for call, count in client.calls.items() if not call.startswith("apply")}
    # Children and pods came from the cache; each optional CRD was looked up once.
    assert reads == {"get CustomResourceDefinition": len(OPTIONAL_CRDS)}

    client.calls.clear()
    held = kube.cache.get(API_VERSION, KIND, "models", "demo")
    assert held is not None
    again = await reconcile(kube, held, reads=Reads.CACHE)
    assert again.writes == 0
    assert client.calls == Counter()  # converged: no read, no write

    # Autoscaling removed: the HPA is found in the cache and deleted, and the PDB with it.
    edited = copy.deepcopy(held)
    del edited["spec"]["autoscaling"]
    pruned = await reconcile(kube, edited, reads=Reads.CACHE)
    assert sorted(pruned.deleted) == ["HorizontalPodAutoscaler/demo", "PodDisruptionBudget/demo"]
    assert ("HorizontalPodAutoscaler", "models", "demo") not in client.objects
    assert not [call for call in client.calls if call.startswith(("get", "list"))]


async def test_resync_reads_the_unwatched_kinds_from_the_api() -> None:
    client = FakeClient()
    kube = Kube(client, cache=ObjectCache(), crd_refresh_seconds=60)  # type: ignore[arg-type]
    body = model_deployment(client, networkPolicy={"enabled": True})
    assert kube.cache is not None
    await reconcile(kube, body, reads=Reads.CACHE)
    held = kube.cache.get(API_VERSION, KIND, "models", "demo")
    assert held is not None
    client.calls.clear()
    assert (await reconcile(kube, held, reads=Reads.CACHE)).writes == 0
    assert client.calls == Counter()
    # Deleted behind our back: no watch tells us, the resync's read of the API does.
    del client.objects[("NetworkPolicy", "models", "demo")]
    outcome = await reconcile(kube, held, reads=Reads.RESYNC)
    assert outcome.applied == ["NetworkPolicy/demo"]
    assert client.calls == Counter({"get NetworkPolicy": 1, "apply NetworkPolicy": 1})
