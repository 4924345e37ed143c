"""A fake of `Kube` for reconcile tests: objects in a dict, writes in a list, a GPU fleet, the
ModelCaches of a namespace."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from modelplane_operator.cache import ObjectCache
from modelplane_operator.kinds import ChildKind
from modelplane_operator.kube import Kube, is_subset
from modelplane_operator.names import LABEL_INSTANCE

Key = tuple[str, str, str]


def nulls(value: Any, path: str = "status") -> list[str]:
    """Where a JSON value holds null."""
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in nulls(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in nulls(item, f"{path}[{i}]")]
    return []


class FakeKube:
    """Just enough of `Kube` to run reconcile: objects in a dict, writes in a list."""

    def __init__(self, body: dict[str, Any], prometheus: bool = False) -> None:
        self.body = body
        self.prometheus = prometheus
        self.objects: dict[Key, dict[str, Any]] = {}
        self.writes: list[str] = []
        self.cache = ObjectCache()
        self.reconciles = 0
        self.fail_next: list[Exception] = []
        self.events: list[tuple[str, str, str]] = []
        self.pods: list[dict[str, Any]] = []
        # The cluster's GPU nodes and the pods bound to them, for the canary's capacity check.
        self.nodes: list[dict[str, Any]] = [gpu_node("gpu-0", 64)]
        self.bound: list[dict[str, Any]] = []
        # ModelCaches by (namespace, name).
        self.caches: dict[tuple[str, str], dict[str, Any]] = {}

    async def get_model_cache(
        self, namespace: str, name: str, *, cached: bool = False
    ) -> dict[str, Any] | None:
        return copy.deepcopy(self.caches.get((namespace, name)))

    async def list_model_caches(
        self, namespace: str | None, *, cached: bool = False
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(item)
            for (item_namespace, _), item in self.caches.items()
            if namespace is None or item_namespace == namespace
        ]

    async def apply_cache_status(self, name: str, namespace: str, status: dict[str, Any]) -> None:
        self.caches[(namespace, name)]["status"] = copy.deepcopy(status)
        self.writes.append("cache status")

    async def gpu_usage(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return copy.deepcopy(self.nodes), copy.deepcopy(self.bound)

    async def crd_installed(self, name: str) -> bool:
        return self.prometheus

    async def get(self, kind: ChildKind, name: str, namespace: str, *, cached: bool = False) -> Any:
        return copy.deepcopy(self.objects.get((kind.kind, namespace, name)))

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        metadata = manifest["metadata"]
        self.objects[(manifest["kind"], metadata["namespace"], metadata["name"])] = copy.deepcopy(
            manifest
        )
        self.writes.append(f"apply {manifest['kind']}")
        return copy.deepcopy(manifest)

    async def delete(
        self, kind: ChildKind, name: str, namespace: str, *, orphan: bool = False
    ) -> None:
        self.objects.pop((kind.kind, namespace, name), None)
        self.writes.append(f"delete {kind.kind}" + (" (orphan)" if orphan else ""))

    async def list_children(
        self,
        kind: ChildKind,
        namespace: str,
        labels: dict[str, str],
        *,
        cached: bool = False,
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(item)
            for (item_kind, item_namespace, _), item in self.objects.items()
            if item_kind == kind.kind
            and item_namespace == namespace
            and is_subset(labels, item["metadata"].get("labels", {}))
        ]

    async def list_pods(
        self, namespace: str, labels: dict[str, str], *, cached: bool = False
    ) -> list[dict[str, Any]]:
        return copy.deepcopy(self.pods)

    async def scale(self, kind: ChildKind, name: str, namespace: str, replicas: int) -> None:
        self.objects[(kind.kind, namespace, name)]["spec"]["replicas"] = replicas
        self.writes.append(f"scale {kind.kind} {replicas}")

    async def get_model_deployment(
        self, namespace: str, name: str, *, cached: bool = False
    ) -> dict[str, Any] | None:
        self.reconciles += 1
        await asyncio.sleep(0.01)  # a real reconcile takes a while; triggers arrive meanwhile
        if self.fail_next:
            raise self.fail_next.pop(0)
        return copy.deepcopy(self.body)

    async def apply_status(self, name: str, namespace: str, status: dict[str, Any]) -> None:
        # The CRD's status fields are not nullable: the apiserver refuses a null with a 422.
        assert not nulls(status), f"status has nulls the apiserver refuses: {nulls(status)}"
        self.body["status"] = copy.deepcopy(status)
        self.writes.append("status")

    async def post_event(
        self, owner: dict[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        self.events.append((event_type, reason, message))


def gpu_node(name: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def bound_pod(node: str, gpus: int, variant: str, instance: str = "demo") -> dict[str, Any]:
    labels = {LABEL_INSTANCE: instance, "modelplane.io/variant": variant}
    resources = {"requests": {"nvidia.com/gpu": str(gpus)}}
    return {
        "metadata": {"name": f"{variant}-{node}", "namespace": "models", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "server", "resources": resources}]},
        "status": {"phase": "Running"},
    }


def as_kube(fake: FakeKube) -> Kube:
    return fake  # type: ignore[return-value]
