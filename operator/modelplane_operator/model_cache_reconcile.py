"""One level-based reconcile of a ModelCache, and its work queue.

observe -> render (`render/model_cache.py`: the claim and the download Job) -> apply -> status
(`model_cache_status.py`), writing only what changed, like a ModelDeployment's. While the download
runs, its progress is read from the download pod every few seconds; a change of the cache's status
re-queues the ModelDeployments of its namespace, which wait for it or mount it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from modelplane_operator.conditions import READY, Condition, merge_conditions
from modelplane_operator.diagnose import INVALID_SPEC
from modelplane_operator.download_progress import ProgressReader
from modelplane_operator.kinds import JOB, PERSISTENT_VOLUME_CLAIM, POD, kind_of
from modelplane_operator.kube import Kube, needs_apply, with_hash
from modelplane_operator.model_cache_api import API_VERSION as CACHE_API_VERSION
from modelplane_operator.model_cache_api import KIND as CACHE_KIND
from modelplane_operator.model_cache_api import ModelCacheSpec, ModelCacheStatus
from modelplane_operator.model_cache_status import CacheFacts, observe_cache
from modelplane_operator.names import CACHE_APP_NAME, LABEL_INSTANCE, LABEL_NAME
from modelplane_operator.reconcile import (
    InvalidSpecError,
    Outcome,
    Reads,
    Reconciler,
    utc_now,
    validation_message,
)
from modelplane_operator.render import Owner
from modelplane_operator.render.model_cache import claim_name, job_name, render_model_cache

Object = dict[str, Any]
# How often a running download's progress is read (and status rewritten when it moved).
PROGRESS_POLL_SECONDS = 2.0


def _status_of(model: ModelCacheStatus) -> Object:
    dumped: Object = model.model_dump(by_alias=True, exclude_none=True)
    return dumped


async def _write_status(kube: Kube, body: Object, status: Object) -> bool:
    previous = body.get("status") or {}
    fields = [field.alias or name for name, field in ModelCacheStatus.model_fields.items()]
    if all(previous.get(key) == status.get(key) for key in fields):
        return False
    metadata = body["metadata"]
    await kube.apply_cache_status(metadata["name"], metadata["namespace"], status)
    return True


def _owned_by(item: Object, uid: str) -> bool:
    references = item.get("metadata", {}).get("ownerReferences") or []
    return any(reference.get("uid") == uid for reference in references)


async def _running_progress(reader: ProgressReader | None, pods: list[Object]) -> Object | None:
    """The progress the running download pod serves, if one runs and answers."""
    if reader is None:
        return None
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") == "Running" and status.get("podIP"):
            return await reader.read(status["podIP"])
    return None


async def reconcile_cache(
    kube: Kube,
    body: Object,
    now: Callable[[], str] = utc_now,
    reads: Reads = Reads.API,
    *,
    progress: ProgressReader | None = None,
) -> Outcome:
    """Bring one ModelCache's claim, download Job and status in line with its spec."""
    metadata = body["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    generation = int(metadata.get("generation") or 0)
    previous = body.get("status") or {}
    try:
        spec = ModelCacheSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        message = validation_message(error)
        conditions = merge_conditions(
            previous.get("conditions") or [],
            [Condition(READY, "False", INVALID_SPEC, message)],
            generation,
            now(),
        )
        status = {"observedGeneration": generation, "conditions": conditions}
        await _write_status(kube, body, status)
        raise InvalidSpecError(message) from error
    owner = Owner(name=name, namespace=namespace, uid=metadata.get("uid"), kind=CACHE_KIND)
    outcome = Outcome(ready="Unknown", reason="")
    live: dict[str, Object | None] = {}
    for child in (with_hash(manifest) for manifest in render_model_cache(owner, spec)):
        kind, child_name = kind_of(child), child["metadata"]["name"]
        found = await kube.get(kind, child_name, namespace, cached=reads.cached(kind))
        if needs_apply(child, found):
            found = await kube.apply(child)
            outcome.applied.append(f"{kind.kind}/{child_name}")
        live[kind.kind] = found
    current_job = job_name(name, spec)
    selector = {LABEL_NAME: CACHE_APP_NAME, LABEL_INSTANCE: name}
    for job in await kube.list_children(JOB, namespace, selector, cached=reads is not Reads.API):
        job_name_live = job["metadata"]["name"]
        if job_name_live != current_job and _owned_by(job, owner.uid or ""):
            await kube.delete(JOB, job_name_live, namespace)
            outcome.deleted.append(f"Job/{job_name_live}")
    claim = live.get(PERSISTENT_VOLUME_CLAIM.kind)
    if spec.storage.existing_claim is not None:
        claim = await kube.get(PERSISTENT_VOLUME_CLAIM, spec.storage.existing_claim, namespace)
    pods = [
        pod
        for pod in await kube.list_pods(namespace, selector, cached=reads.cached(POD))
        if (pod["metadata"].get("labels") or {}).get("job-name") == current_job
    ]
    facts = CacheFacts(
        claim_name=claim_name(name, spec),
        claim=claim,
        job=live.get(JOB.kind),
        pods=pods,
        progress=await _running_progress(progress, pods),
    )
    known = ModelCacheStatus.model_validate(previous) if previous else None
    fields, ready, downloading = observe_cache(spec, facts, known)
    conditions = merge_conditions(previous.get("conditions") or [], [ready], generation, now())
    status = _status_of(
        ModelCacheStatus.model_validate(
            {"observedGeneration": generation, "conditions": conditions, **fields}
        )
    )
    outcome.status_written = await _write_status(kube, body, status)
    outcome.ready, outcome.reason = ready.status, ready.reason
    outcome.requeue_after = PROGRESS_POLL_SECONDS if downloading else None
    return outcome


class CacheReconciler(Reconciler):
    """The work queue of ModelCaches: the same queue discipline as ModelDeployments' (one
    reconcile per cache at a time, triggers coalesced, one retry policy)."""

    OWN_KIND = (CACHE_API_VERSION, CACHE_KIND)

    def __init__(self, kube: Kube, **queue: Any) -> None:
        super().__init__(kube, **queue)
        self._progress = ProgressReader()
        # Called with a namespace whenever a cache's status changed (its ModelDeployments react).
        self.on_status_change: Callable[[str], None] = lambda namespace: None

    async def reconcile_key(
        self, namespace: str, name: str, reads: Reads = Reads.CACHE
    ) -> Outcome | None:
        body = await self.kube.get_model_cache(namespace, name, cached=reads is not Reads.API)
        if body is None:
            self.forget(namespace, name)
            self.on_status_change(namespace)
            return None
        if body["metadata"].get("deletionTimestamp"):
            self.on_status_change(namespace)
            return None
        outcome = await reconcile_cache(self.kube, body, reads=reads, progress=self._progress)
        if outcome.status_written:
            self.on_status_change(namespace)
        return outcome

    async def close(self) -> None:
        await self._progress.close()
        await super().close()
