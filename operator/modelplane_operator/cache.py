"""In-memory copies of the objects the operator reads, so most reconciles make no API read.

Fed by the watch events kopf already delivers (ModelDeployments, their watched children, pods) and
by the responses of our own reads and writes. Pure: no I/O, no asyncio.

Entries are stripped of what no reconcile reads (`metadata.managedFields` everywhere, a pod's
`spec`), which is most of an object's size, so memory grows slowly with the number of
ModelDeployments. An update older than the entry held (a smaller `resourceVersion`: a watch event
that arrives after the response of our own write) is ignored, and `put` says whether the entry
changed, so the echo of our own write does not trigger another reconcile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelplane_operator.names import LABEL_INSTANCE

Object = dict[str, Any]
ObjectKey = tuple[str, str, str, str]  # apiVersion, kind, namespace, name
GroupKey = tuple[str, str, str, str]  # apiVersion, kind, namespace, instance label


def stripped(item: Mapping[str, Any]) -> Object:
    """A shallow copy without managedFields (and, for pods, without the spec)."""
    metadata = {key: value for key, value in item["metadata"].items() if key != "managedFields"}
    dropped = {"metadata", "spec"} if item.get("kind") == "Pod" else {"metadata"}
    kept = {key: value for key, value in item.items() if key not in dropped}
    return {"metadata": metadata, **kept}


def _version(item: Mapping[str, Any]) -> int | None:
    # resourceVersion is opaque by contract but an etcd revision in every apiserver we run on;
    # anything else disables the staleness check (the newest arrival wins).
    value = item["metadata"].get("resourceVersion")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _is_older(candidate: Mapping[str, Any], held: Mapping[str, Any]) -> bool:
    new, old = _version(candidate), _version(held)
    return new is not None and old is not None and new < old


class ObjectCache:
    """Objects by (apiVersion, kind, namespace, name), grouped by their instance label."""

    def __init__(self) -> None:
        self._objects: dict[ObjectKey, Object] = {}
        self._groups: dict[GroupKey, dict[str, Object]] = {}

    def __len__(self) -> int:
        return len(self._objects)

    @staticmethod
    def _group_of(key: ObjectKey, item: Mapping[str, Any]) -> GroupKey:
        instance = (item["metadata"].get("labels") or {}).get(LABEL_INSTANCE, "")
        return (key[0], key[1], key[2], instance)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Object | None:
        """The object held, or None."""
        return self._objects.get((api_version, kind, namespace, name))

    def put(self, api_version: str, kind: str, item: Mapping[str, Any]) -> bool:
        """Hold `item` (stripped) unless it is older than what is held; whether anything changed."""
        metadata = item["metadata"]
        key = (api_version, kind, metadata.get("namespace", ""), metadata["name"])
        held = self._objects.get(key)
        if held is not None:
            if _is_older(item, held):
                return False
            version = metadata.get("resourceVersion")
            if version is not None and version == held["metadata"].get("resourceVersion"):
                return False
            self._discard(key, held)
        entry = stripped({"apiVersion": api_version, "kind": kind, **item})
        self._objects[key] = entry
        self._groups.setdefault(self._group_of(key, entry), {})[key[3]] = entry
        return True

    def remove(self, api_version: str, kind: str, item: Mapping[str, Any]) -> bool:
        """Forget a deleted object unless what is held is newer (re-created since); whether held."""
        metadata = item["metadata"]
        key = (api_version, kind, metadata.get("namespace", ""), metadata["name"])
        held = self._objects.get(key)
        if held is None or _is_older(item, held):
            return False
        self._discard(key, held)
        return True

    def forget(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Forget an object known to be gone (our own delete, a 404)."""
        key = (api_version, kind, namespace, name)
        held = self._objects.get(key)
        if held is not None:
            self._discard(key, held)

    def _discard(self, key: ObjectKey, held: Object) -> None:
        del self._objects[key]
        group_key = self._group_of(key, held)
        group = self._groups.get(group_key, {})
        group.pop(key[3], None)
        if not group:
            self._groups.pop(group_key, None)

    def in_namespace(self, api_version: str, kind: str, namespace: str) -> list[Object]:
        """Every object of one kind held for a namespace (a scan: for small kinds only)."""
        return [
            item
            for (held_version, held_kind, held_namespace, _), item in self._objects.items()
            if (held_version, held_kind, held_namespace) == (api_version, kind, namespace)
        ]

    def select(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[Object]:
        """Objects of one kind in a namespace whose labels include `labels` (which must name
        the instance: that is how objects are grouped)."""
        group = self._groups.get((api_version, kind, namespace, labels[LABEL_INSTANCE]), {})
        return [
            item
            for item in group.values()
            if all(
                (item["metadata"].get("labels") or {}).get(label) == value
                for label, value in labels.items()
            )
        ]
