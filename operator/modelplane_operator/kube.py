"""The only module that talks to the Kubernetes API (lightkube's async client).

Reads return plain dicts in API form. Writes are server-side apply with one field manager and
`force=True`, and happen only when the live object differs from the desired one in a field we
manage (`needs_apply`), so a converged cluster sees no writes at all. A 409 conflict is retried
quickly here, in one place; every other API error propagates to the caller.

Given an `ObjectCache` (the running operator's), every read and write response is kept there, and
reads with `cached=True` answer from it without an API call; without one every read goes to the
API. Whether a CRD is installed is remembered for `crd_refresh_seconds`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import InvalidOperation
from typing import Any, TypeVar

from lightkube import ALL_NS, ApiError, AsyncClient
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import create_namespaced_resource
from lightkube.operators import not_equal
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, Node, PersistentVolumeClaim, Pod, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import CascadeType, PatchType
from lightkube.utils.quantity import parse_quantity

from modelplane_operator.cache import ObjectCache
from modelplane_operator.kinds import POD, ChildKind, kind_of
from modelplane_operator.model_cache_api import API_VERSION as CACHE_API_VERSION
from modelplane_operator.model_cache_api import KIND as CACHE_KIND
from modelplane_operator.model_cache_api import PLURAL as CACHE_PLURAL
from modelplane_operator.models import API_VERSION, GROUP, KIND, PLURAL, VERSION
from modelplane_operator.names import FIELD_MANAGER

Object = dict[str, Any]
T = TypeVar("T")
logger = logging.getLogger(__name__)

ModelDeploymentResource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
ModelCacheResource = create_namespaced_resource(GROUP, VERSION, CACHE_KIND, CACHE_PLURAL)

# lightkube's typed resources for the built-in kinds; add-on kinds get a generic resource.
_BUILT_IN: dict[str, type[NamespacedResource]] = {
    "Deployment": Deployment,
    "Service": Service,
    "HorizontalPodAutoscaler": HorizontalPodAutoscaler,
    "PodDisruptionBudget": PodDisruptionBudget,
    "NetworkPolicy": NetworkPolicy,
    "Pod": Pod,
    "ReplicaSet": ReplicaSet,
    "PersistentVolumeClaim": PersistentVolumeClaim,
    "Job": Job,
}


@functools.cache
def resource_for(kind: ChildKind) -> type[NamespacedResource]:
    """The lightkube resource that addresses one registered kind."""
    if kind.crd is None:
        return _BUILT_IN[kind.kind]
    return create_namespaced_resource(kind.group, kind.version, kind.kind, kind.plural)


HASH_ANNOTATION = f"{GROUP}/applied-hash"
CONFLICT = 409
NOT_FOUND = 404
FORBIDDEN = 403


def to_object(resource: Any) -> Object:
    """A lightkube model or generic resource as a plain dict in API form."""
    converted: Object = resource.to_dict()
    return converted


def manifest_hash(manifest: Object) -> str:
    """A stable digest of what we apply; changes when we stop sending a field, too."""
    encoded = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def with_hash(manifest: Object) -> Object:
    """The manifest with its own hash recorded in an annotation (see `needs_apply`)."""
    digest = manifest_hash(manifest)
    metadata = dict(manifest["metadata"])
    metadata["annotations"] = {**metadata.get("annotations", {}), HASH_ANNOTATION: digest}
    return {**manifest, "metadata": metadata}


def _quantities_equal(desired: str, live: str) -> bool:
    try:
        parsed = parse_quantity(desired)
        return parsed is not None and parsed == parse_quantity(live)
    except (ValueError, InvalidOperation, TypeError):
        return False


def is_subset(desired: Any, live: Any) -> bool:
    """Whether every field of `desired` has the same value in `live` (defaults may add more).

    Lists must match item by item; strings that are equal Kubernetes quantities ("1000m", "1")
    count as equal because the apiserver normalises them.
    """
    if isinstance(desired, dict):
        return _dict_subset(desired, live)
    if isinstance(desired, list):
        return _list_subset(desired, live)
    if desired == live:
        return True
    scalar = (str, int)
    if isinstance(desired, scalar) and isinstance(live, scalar) and not isinstance(desired, bool):
        return _quantities_equal(str(desired), str(live))
    return False


def _dict_subset(desired: dict[str, Any], live: Any) -> bool:
    if not isinstance(live, dict):
        return not desired and live is None
    return all(is_subset(value, live.get(key)) for key, value in desired.items())


def _list_subset(desired: list[Any], live: Any) -> bool:
    if live is None:
        return not desired
    if not isinstance(live, list) or len(desired) != len(live):
        return False
    return all(is_subset(d, item) for d, item in zip(desired, live, strict=True))


def needs_apply(desired: Object, live: Object | None) -> bool:
    """Whether applying `desired` (with its hash annotation) would change `live`.

    The subset check catches hand edits of fields we manage; the hash annotation catches fields we
    stopped sending (which server-side apply removes but a subset check cannot see).
    """
    return live is None or not is_subset(desired, live)


class Kube:
    """Typed-enough access to the objects the operator reads and writes."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        conflict_retries: int = 3,
        conflict_delay_seconds: float = 0.2,
        cache: ObjectCache | None = None,
        crd_refresh_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.cache = cache
        self._conflict_retries = conflict_retries
        self._conflict_delay = conflict_delay_seconds
        self._crd_refresh = crd_refresh_seconds
        self._clock = clock
        self._crds: dict[str, tuple[float, bool]] = {}

    def _keep(self, api_version: str, kind: str, item: Object) -> None:
        if self.cache is not None:
            self.cache.put(api_version, kind, item)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call`, retrying 409 Conflict a few times with a short pause."""
        for attempt in range(self._conflict_retries + 1):
            try:
                return await call()
            except ApiError as error:
                if error.status.code != CONFLICT or attempt == self._conflict_retries:
                    raise
                await asyncio.sleep(self._conflict_delay * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(
        self, kind: ChildKind, name: str, namespace: str, *, cached: bool = False
    ) -> Object | None:
        """The live object, or None when it does not exist; `cached`: as the cache holds it."""
        if cached and self.cache is not None:
            return self.cache.get(kind.api_version, kind.kind, namespace, name)
        try:
            live = to_object(await self.client.get(resource_for(kind), name, namespace=namespace))
        except ApiError as error:
            if error.status.code == NOT_FOUND:
                if self.cache is not None:
                    self.cache.forget(kind.api_version, kind.kind, namespace, name)
                return None
            raise
        self._keep(kind.api_version, kind.kind, live)
        return live

    async def apply(self, manifest: Object) -> Object:
        """Server-side apply of one child as the operator's field manager."""
        resource = resource_for(kind_of(manifest))
        metadata = manifest["metadata"]

        async def call() -> Object:
            applied = await self.client.patch(
                resource,
                metadata["name"],
                manifest,
                namespace=metadata["namespace"],
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            )
            return to_object(applied)

        live = await self._retrying(call)
        self._keep(manifest["apiVersion"], manifest["kind"], live)
        return live

    async def delete(
        self, kind: ChildKind, name: str, namespace: str, *, orphan: bool = False
    ) -> None:
        """Delete a child; already gone is fine. `orphan`: leave what it owns (a Deployment's
        ReplicaSets and their pods) running. A Job takes its pods with it (batch/v1's default
        is to orphan them)."""
        resource = resource_for(kind)

        async def call() -> None:
            if orphan:
                await self.client.delete(
                    resource, name, namespace=namespace, cascade=CascadeType.ORPHAN
                )
            elif kind.kind == "Job":
                await self.client.delete(
                    resource, name, namespace=namespace, cascade=CascadeType.BACKGROUND
                )
            else:
                await self.client.delete(resource, name, namespace=namespace)

        try:
            await self._retrying(call)
        except ApiError as error:
            if error.status.code != NOT_FOUND:
                raise
        if self.cache is not None:
            self.cache.forget(kind.api_version, kind.kind, namespace, name)

    async def list_children(
        self,
        kind: ChildKind,
        namespace: str,
        labels: Mapping[str, str],
        *,
        cached: bool = False,
    ) -> list[Object]:
        """Objects of one kind in a namespace selected by labels (naming the instance)."""
        if cached and self.cache is not None:
            return self.cache.select(kind.api_version, kind.kind, namespace, labels)
        resource = resource_for(kind)
        items = [
            to_object(item)
            async for item in self.client.list(resource, namespace=namespace, labels=dict(labels))
        ]
        for item in items:
            self._keep(kind.api_version, kind.kind, item)
        return items

    async def scale(self, kind: ChildKind, name: str, namespace: str, replicas: int) -> None:
        """Set spec.replicas of a ReplicaSet the operator took over (a merge patch: its field
        manager is the Deployment controller's, which is gone)."""
        await self._retrying(
            lambda: self.client.patch(
                resource_for(kind),
                name,
                {"spec": {"replicas": replicas}},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        )

    async def list_pods(
        self, namespace: str, labels: Mapping[str, str], *, cached: bool = False
    ) -> list[Object]:
        """Pods selected by labels (naming the instance)."""
        return await self.list_children(POD, namespace, labels, cached=cached)

    async def gpu_usage(self) -> tuple[list[Object], list[Object]] | None:
        """Every node, and every pod bound to a node (all namespaces), as the capacity check reads
        them; None when the operator may not list them (a namespaced install)."""
        try:
            nodes = [to_object(item) async for item in self.client.list(Node)]
            pods = [
                to_object(item)
                async for item in self.client.list(
                    Pod, namespace=ALL_NS, fields={"spec.nodeName": not_equal("")}
                )
            ]
        except ApiError as error:
            if error.status.code == FORBIDDEN:
                return None
            raise
        return nodes, pods

    async def crd_installed(self, name: str) -> bool:
        """Whether a CustomResourceDefinition exists (e.g. the Prometheus Operator's); the answer
        is reused for `crd_refresh_seconds`, so a CRD installed later is noticed within that."""
        checked = self._crds.get(name)
        if checked is not None and self._clock() - checked[0] < self._crd_refresh:
            return checked[1]
        try:
            await self.client.get(CustomResourceDefinition, name)
            installed = True
        except ApiError as error:
            if error.status.code != NOT_FOUND:
                raise
            installed = False
        self._crds[name] = (self._clock(), installed)
        return installed

    async def post_event(self, owner: Object, event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event about a ModelDeployment (what `kubectl describe` lists). Best effort:
        a failure is logged, never raised, so an event can never fail a reconcile."""
        metadata = owner["metadata"]
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{metadata['name']}.",
                "namespace": metadata["namespace"],
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata.get("uid"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": socket.gethostname(),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            resource: Event = Event.from_dict(event)  # type: ignore[assignment]  # untyped classmethod
            await self.client.create(resource)
        except Exception as error:  # best effort by design: status already says it all
            logger.warning("could not post a %s event for %s: %s", reason, metadata["name"], error)

    # --- Our own custom resources: ModelDeployments and ModelCaches -------------------------

    async def _get_own(
        self, resource: Any, kind: str, namespace: str, name: str, *, cached: bool
    ) -> Object | None:
        """One of our resources, or None when it is gone; `cached`: as the cache holds it,
        reading the API only when the cache holds nothing."""
        api_version = f"{GROUP}/{VERSION}"
        if cached and self.cache is not None:
            held = self.cache.get(api_version, kind, namespace, name)
            if held is not None:
                return held
        try:
            body = to_object(await self.client.get(resource, name, namespace=namespace))
        except ApiError as error:
            if error.status.code == NOT_FOUND:
                return None
            raise
        self._keep(api_version, kind, body)
        return body

    async def _list_own(self, resource: Any, kind: str, namespace: str | None) -> list[Object]:
        """Our resources of one kind in a namespace, or in all of them when namespace is None."""
        scope = "*" if namespace is None else namespace
        bodies = [to_object(item) async for item in self.client.list(resource, namespace=scope)]
        for body in bodies:
            self._keep(f"{GROUP}/{VERSION}", kind, body)
        return bodies

    async def _apply_own_status(
        self, resource: Any, kind: str, name: str, namespace: str, status: Object
    ) -> None:
        """Server-side apply of a status subresource: fields we stop sending disappear."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        written = await self._retrying(
            lambda: self.client.patch(
                resource.Status,
                name,
                body,
                namespace=namespace,
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            )
        )
        # Held at once: a reconcile before the watch echoes this write compares against it.
        self._keep(f"{GROUP}/{VERSION}", kind, to_object(written))

    async def get_model_deployment(
        self, namespace: str, name: str, *, cached: bool = False
    ) -> Object | None:
        """A ModelDeployment, or None when it is gone."""
        return await self._get_own(ModelDeploymentResource, KIND, namespace, name, cached=cached)

    async def list_model_deployments(self, namespace: str | None) -> list[Object]:
        """ModelDeployments in one namespace, or in all of them when namespace is None."""
        return await self._list_own(ModelDeploymentResource, KIND, namespace)

    async def apply_status(self, name: str, namespace: str, status: Object) -> None:
        """Server-side apply of a ModelDeployment's status."""
        await self._apply_own_status(ModelDeploymentResource, KIND, name, namespace, status)

    async def get_model_cache(
        self, namespace: str, name: str, *, cached: bool = False
    ) -> Object | None:
        """A ModelCache, or None when there is none."""
        return await self._get_own(ModelCacheResource, CACHE_KIND, namespace, name, cached=cached)

    async def list_model_caches(
        self, namespace: str | None, *, cached: bool = False
    ) -> list[Object]:
        """ModelCaches in one namespace (all of them when None); `cached`: as the cache holds
        a namespace's (the watch keeps them)."""
        if cached and self.cache is not None and namespace is not None:
            return self.cache.in_namespace(CACHE_API_VERSION, CACHE_KIND, namespace)
        return await self._list_own(ModelCacheResource, CACHE_KIND, namespace)

    async def apply_cache_status(self, name: str, namespace: str, status: Object) -> None:
        """Server-side apply of a ModelCache's status."""
        await self._apply_own_status(ModelCacheResource, CACHE_KIND, name, namespace, status)
