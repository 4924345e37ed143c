"""Which ModelCache a ModelDeployment's model comes from, and what that changes.

`spec.model.cacheRef` names one; without it, a Ready ModelCache of the namespace with the same
source (uri, revision, ggufFile) is used. A cached model is a claim: the model is rendered as
`pvc://<claim>` with the size the cache measured, so pods mount it read-only and download nothing,
and the startup budget follows what was really downloaded. While a named cache downloads, the
ModelDeployment keeps no pods (nothing would find its files) and says so; while a cache in use is
deleted, running pods keep its claim (PVC protection) and the condition says it is going.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelplane_operator.conditions import MODEL_CACHE_READY, Condition
from modelplane_operator.kube import Kube
from modelplane_operator.model_cache_api import ModelCacheSpec
from modelplane_operator.models import ModelSource

Object = dict[str, Any]
GIB = 1 << 30
DEFAULT_REVISION = "main"
MODEL_DOWNLOADING = "ModelDownloading"


@dataclass(frozen=True)
class CacheUse:
    """The cache a model comes from: its claim (None: nothing to mount yet), whether its files
    are complete, the size it measured, and the ModelCacheReady condition."""

    name: str
    claim: str | None
    ready: bool
    size_gib: float | None
    condition: Condition


def same_source(cache: ModelCacheSpec, model: ModelSource) -> bool:
    """Whether the cache holds exactly this model."""
    return (
        cache.source.uri == model.uri
        and cache.source.revision == (model.revision or DEFAULT_REVISION)
        and cache.source.gguf_file == model.gguf_file
    )


def _ready_message(body: Object) -> str:
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return str(condition.get("message") or condition.get("reason") or "")
    return "not observed yet"


def _measured(resolved: Object) -> float | None:
    """The size the pods' cache measured, as the last resolved configuration recorded it."""
    if resolved.get("modelSizeSource") != "measured":
        return None
    return float(resolved["modelSizeGiB"])


def _use(body: Object, previous_claim: str | None, previous_size: float | None = None) -> CacheUse:
    name = body["metadata"]["name"]
    status = body.get("status") or {}
    claim = status.get("claimName") or previous_claim
    if body["metadata"].get("deletionTimestamp"):
        message = (
            f"ModelCache {name} is being deleted: running pods keep claim {claim} until they "
            "stop; new pods cannot start from it"
        )
        return CacheUse(
            name, claim, False, None, Condition(MODEL_CACHE_READY, "False", "CacheDeleted", message)
        )
    if status.get("phase") == "Ready":
        size_bytes = status.get("sizeBytes")
        size = None if size_bytes is None else int(size_bytes) / GIB
        message = f"ModelCache {name}: {_ready_message(body)}"
        return CacheUse(
            name, claim, True, size, Condition(MODEL_CACHE_READY, "True", "Ready", message)
        )
    reason = "Failed" if status.get("phase") == "Failed" else "Downloading"
    message = f"ModelCache {name} is not ready: {_ready_message(body)}"
    return CacheUse(
        name, claim, False, None, Condition(MODEL_CACHE_READY, "False", reason, message)
    )


async def resolve(
    kube: Kube,
    namespace: str,
    model: ModelSource,
    resolved: Object,
    *,
    cached: bool,
) -> CacheUse | None:
    """The cache the model comes from, if any. `resolved`: the status' last resolved
    configuration, whose claim and measured size the pods keep while their cache goes away."""
    previous_claim = resolved.get("modelClaim")
    if model.cache_ref is not None:
        body = await kube.get_model_cache(namespace, model.cache_ref, cached=cached)
        if body is None:
            message = f"ModelCache {model.cache_ref} does not exist"
            if previous_claim:
                message += f": running pods keep claim {previous_claim} until they stop"
            condition = Condition(MODEL_CACHE_READY, "False", "CacheNotFound", message)
            return CacheUse(model.cache_ref, previous_claim, False, _measured(resolved), condition)
        return _use(body, previous_claim, _measured(resolved))
    if not model.uri.startswith("hf://"):
        return None
    for body in sorted(
        await kube.list_model_caches(namespace, cached=cached),
        key=lambda item: str(item["metadata"]["name"]),
    ):
        spec = ModelCacheSpec.model_validate(body.get("spec") or {})
        status = (body.get("status") or {}).get("phase")
        if (
            same_source(spec, model)
            and status == "Ready"
            and not body["metadata"].get("deletionTimestamp")
        ):
            return _use(body, previous_claim, _measured(resolved))
    return None


def cached_model(model: ModelSource, use: CacheUse) -> ModelSource:
    """The model as its cache holds it: the claim, mounted read-only, and the measured size."""
    if use.claim is None:
        return model
    changes: dict[str, Any] = {"uri": f"pvc://{use.claim}", "cache_ref": None}
    if use.size_gib is not None and model.size_gi_b is None:
        changes["size_gi_b"] = round(use.size_gib, 3)
    return model.model_copy(update=changes)
