"""One level-based reconcile: observe -> render -> apply -> status, for every trigger.

Create, update, resume, a child's change and the periodic resync all end in `reconcile()`. It reads
the live children, applies only those that differ from what `render` wants, deletes children that
are no longer wanted (found by labels and owner uid), and writes status only when it changed, so
running it on a converged ModelDeployment makes no writes at all.

`Reconciler` feeds it from a work queue (one reconcile per ModelDeployment at a time, bursts of
triggers coalesced, failures retried by one policy), keeps the cache up to date from the watch
events it is handed, and records the operator's metrics. Most reconciles read only the cache
(`Reads`); the first one of each ModelDeployment, and the resync for kinds nobody watches, read
the API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError
from pydantic import ValidationError

from modelplane_operator import canary_control, metrics, model_cache_use, selector_migration
from modelplane_operator.autoscaler_conditions import PROMETHEUS_URL_MISSING, startup_seconds
from modelplane_operator.autoscaling import round_up_startup
from modelplane_operator.conditions import (
    CRD_NOT_INSTALLED,
    READY,
    Condition,
    find,
    merge_conditions,
)
from modelplane_operator.diagnose import FAILURE_REASONS, INVALID_SPEC, observe, rollout_state
from modelplane_operator.kinds import (
    CHILD_KINDS,
    DEPLOYMENT,
    HORIZONTAL_POD_AUTOSCALER,
    OPTIONAL_CRDS,
    POD,
    PROMETHEUS_RULE,
    REPLICA_SET,
    SCALED_OBJECT,
    SERVICE_MONITOR,
    ChildKind,
    child_key,
    kind_of,
)
from modelplane_operator.kube import NOT_FOUND, Kube, needs_apply, with_hash
from modelplane_operator.models import (
    API_VERSION,
    KIND,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ResolvedConfig,
)
from modelplane_operator.names import (
    CANARY,
    FIELD_MANAGER,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    VARIANT_LABEL,
    instance_labels,
    instance_selector,
)
from modelplane_operator.prometheus import Prometheus
from modelplane_operator.render import Owner, Rendered, RenderOptions, render, service_url

Object = dict[str, Any]
Key = tuple[str, str]
# Live children by (kind, name); None where the child does not exist.
LiveChildren = dict[tuple[str, str], Object | None]
FORBIDDEN = 403
logger = logging.getLogger(__name__)

# Status fields this operator owns (the typed model's): anything else in status is left alone by
# the comparison.
STATUS_FIELDS = tuple(
    field.alias or name for name, field in ModelDeploymentStatus.model_fields.items()
)


def status_of(model: ModelDeploymentStatus) -> Object:
    """Status as the API takes it: camelCase, no nulls (the CRD's fields are not nullable)."""
    dumped: Object = model.model_dump(by_alias=True, exclude_none=True)
    return dumped


class Reads(enum.IntEnum):
    """Where one reconcile reads the live children from; a larger value reads more from the API.

    CACHE: everything from the cache (what watch events and our own requests left there).
    RESYNC: watched kinds from the cache, the others (NetworkPolicy, ServiceMonitor) from the API,
    which is how their drift is noticed. API: everything from the API (the first reconcile of a
    ModelDeployment in this process, before the cache has seen its children).
    """

    CACHE = 0
    RESYNC = 1
    API = 2

    def cached(self, kind: ChildKind) -> bool:
        """Whether objects of this kind are read from the cache."""
        return self is Reads.CACHE or (self is Reads.RESYNC and kind.watched)


class InvalidSpecError(Exception):
    """The spec cannot be rendered; retrying will not help until the user edits it."""


@dataclass
class Outcome:
    """What one reconcile did."""

    ready: str
    reason: str
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False
    status_deferred: bool = False
    # Seconds until a time-based change (a canary's pause or analysis window) is due.
    requeue_after: float | None = None

    @property
    def writes(self) -> int:
        """API writes made: applies, deletes and the status patch."""
        return len(self.applied) + len(self.deleted) + int(self.status_written)


def utc_now() -> str:
    """RFC 3339 timestamp with second precision, as metav1.Time serialises."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        prefix = f"spec.{location}: " if location else ""
        parts.append(f"{prefix}{item['msg']}")
    return "; ".join(parts)


def _gpu_summary(spec: ModelDeploymentSpec) -> str:
    if spec.accelerator.count == 0:
        return "none"
    return f"{spec.accelerator.count}x {spec.accelerator.type or 'any'}"


def _status_changed(live: Object, desired: Object) -> bool:
    return any(live.get(key) != desired.get(key) for key in STATUS_FIELDS)


def ready_event(previous: list[Object], conditions: list[Object]) -> tuple[str, str, str] | None:
    """The event a change of the Ready condition deserves, as (type, reason, message): a Warning
    when Ready turns False for a failure (not mere progress), a Normal `Ready` when it turns True;
    None when Ready's status and reason did not change."""
    before, after = find(previous, READY) or {}, find(conditions, READY) or {}
    if (before.get("status"), before.get("reason")) == (after.get("status"), after.get("reason")):
        return None
    if after.get("status") == "False" and after.get("reason") in FAILURE_REASONS:
        return "Warning", str(after["reason"]), str(after.get("message", ""))
    if after.get("status") == "True":
        return "Normal", READY, str(after.get("message") or after.get("reason") or "ready")
    return None


async def _write_status(kube: Kube, body: Object, status: Object) -> bool:
    """Write status if it changed, then post the event its Ready change deserves, if any."""
    metadata = body["metadata"]
    previous = body.get("status") or {}
    if not _status_changed(previous, status):
        return False
    await kube.apply_status(metadata["name"], metadata["namespace"], status)
    event = ready_event(previous.get("conditions") or [], status.get("conditions") or [])
    if event is not None:
        await kube.post_event(body, *event)
    return True


def _owned_by(item: Object, uid: str) -> bool:
    references = item.get("metadata", {}).get("ownerReferences") or []
    return any(reference.get("uid") == uid for reference in references)


async def _apply_children(
    kube: Kube, children: list[Object], outcome: Outcome, reads: Reads
) -> LiveChildren:
    """Apply each child that differs from its live object; the live objects, by (kind, name)."""
    live_children: LiveChildren = {}
    for child in (with_hash(manifest) for manifest in children):
        kind, metadata = kind_of(child), child["metadata"]
        live = await kube.get(
            kind, metadata["name"], metadata["namespace"], cached=reads.cached(kind)
        )
        if kind is DEPLOYMENT and selector_migration.selector_changed(child, live):
            # Immutable: replace it, leaving its pods serving (selector_migration.py). The new
            # one is created once the old one is gone (its deletion is a watch event).
            await kube.delete(kind, metadata["name"], metadata["namespace"], orphan=True)
            outcome.deleted.append(f"{kind.kind}/{metadata['name']}")
            live = None
        elif needs_apply(child, live):
            live = await kube.apply(child)
            outcome.applied.append(f"{kind.kind}/{metadata['name']}")
        live_children[child_key(child)] = live
    return live_children


async def _delete_unwanted(
    kube: Kube,
    kinds: list[ChildKind],
    wanted: LiveChildren,
    owner: Owner,
    outcome: Outcome,
    *,
    reads: Reads,
) -> None:
    """Delete our children that are not wanted (by kind and name): found by labels, confirmed by
    owner uid."""
    selector = {**instance_labels(owner.name), LABEL_MANAGED_BY: FIELD_MANAGER}
    for kind in kinds:
        # What could exist is in the cache (what we applied or saw), except before our first
        # reconcile of this owner in this process: only then list from the API.
        found = await kube.list_children(
            kind, owner.namespace, selector, cached=reads is not Reads.API
        )
        for item in found:
            name = item["metadata"]["name"]
            if (kind.kind, name) not in wanted and _owned_by(item, owner.uid or ""):
                await kube.delete(kind, name, owner.namespace)
                outcome.deleted.append(f"{kind.kind}/{name}")


async def _retire_orphaned(
    kube: Kube, owner: Owner, deployment: Object | None, pods: list[Object], outcome: Outcome
) -> None:
    """Shrink, then delete, the ReplicaSets a Deployment made before the variant label left
    behind, as the new Deployment's pods become ready (selector_migration.py)."""
    if deployment is None or not selector_migration.has_legacy_pods(pods):
        return
    found = await kube.list_children(REPLICA_SET, owner.namespace, instance_labels(owner.name))
    legacy = selector_migration.orphaned(found)
    rollout = rollout_state(deployment)
    pending = any(
        selector_migration.unschedulable(pod)
        for pod in pods
        if not selector_migration.is_legacy(pod)
    )
    plan = selector_migration.retire(legacy, rollout.desired, rollout.ready, pending)
    for item in legacy:
        name = item["metadata"]["name"]
        if plan[name] == 0:
            await kube.delete(REPLICA_SET, name, owner.namespace)
            outcome.deleted.append(f"{REPLICA_SET.kind}/{name}")
        elif plan[name] != int(item["spec"].get("replicas") or 0):
            await kube.scale(REPLICA_SET, name, owner.namespace, plan[name])
            outcome.applied.append(f"{REPLICA_SET.kind}/{name}")


@dataclass(frozen=True)
class Caches:
    """The ModelCaches a ModelDeployment's variants use: the spec with stable's model as its cache
    holds it, stable's cache (and whether its pods must wait for it), the canary's own."""

    spec: ModelDeploymentSpec
    stable: model_cache_use.CacheUse | None
    waiting: bool
    canary: model_cache_use.CacheUse | None


async def _caches(
    kube: Kube, namespace: str, spec: ModelDeploymentSpec, body: Object, reads: Reads
) -> Caches:
    resolved_before = (body.get("status") or {}).get("resolved") or {}
    cached = reads is not Reads.API
    cache = await model_cache_use.resolve(
        kube, namespace, spec.model, resolved_before, cached=cached
    )
    waiting = cache is not None and not cache.ready and cache.condition.reason not in KEEP_SERVING
    if cache is not None and cache.claim is not None:
        spec = spec.model_copy(update={"model": model_cache_use.cached_model(spec.model, cache)})
    # A canary with a model of its own has its own cache, if any (stable's otherwise).
    canary_cache = None
    if spec.canary is not None and spec.canary.model is not None:
        canary_cache = await model_cache_use.resolve(
            kube, namespace, spec.canary.model, {}, cached=cached
        )
    return Caches(spec, cache, waiting, canary_cache)


# A cache in use that is going away: running pods keep its claim, so nothing is scaled down.
KEEP_SERVING = ("CacheDeleted", "CacheNotFound")


def _with_cache(
    conditions: list[Condition], cache: model_cache_use.CacheUse, *, waiting: bool
) -> list[Condition]:
    """The conditions with ModelCacheReady, and Ready saying the model is downloading while the
    pods wait for their cache."""
    if waiting:
        downloading = Condition(
            READY, "False", model_cache_use.MODEL_DOWNLOADING, cache.condition.message
        )
        conditions = [downloading if item.type == READY else item for item in conditions]
    return [*conditions, cache.condition]


def _resolved(rendered: Rendered, cache: model_cache_use.CacheUse | None) -> ResolvedConfig:
    """What was applied, naming the ModelCache and claim the weights come from, if any."""
    if cache is None or cache.claim is None:
        return rendered.resolved
    update: dict[str, Any] = {"model_cache": cache.name, "model_claim": cache.claim}
    if cache.size_gib is not None:
        update["model_size_source"] = "measured"
    return rendered.resolved.model_copy(update=update)


def _variant(pod: Object) -> str | None:
    return (pod["metadata"].get("labels") or {}).get(VARIANT_LABEL)


def _autoscaler_problem(rendered: Rendered) -> tuple[str, str] | None:
    """Why the autoscaler the spec asks for was not rendered, if it was not."""
    plan = rendered.autoscaler
    if plan is not None and plan.problem is not None:
        return PROMETHEUS_URL_MISSING, plan.problem
    if SCALED_OBJECT in rendered.skipped:
        return CRD_NOT_INSTALLED, SCALED_OBJECT.absent()
    return None


def _monitoring_wanted(spec: ModelDeploymentSpec) -> tuple[ChildKind, ...]:
    wanted = (SERVICE_MONITOR,) if spec.monitoring.service_monitor else ()
    return wanted + ((PROMETHEUS_RULE,) if spec.slo is not None else ())


async def reconcile(
    kube: Kube,
    body: Object,
    now: Callable[[], str] = utc_now,
    reads: Reads = Reads.API,
    *,
    defer_status: bool = False,
    options: RenderOptions = RenderOptions(),  # noqa: B008 - frozen, so safe to share
    prometheus: Prometheus | None = None,
) -> Outcome:
    """Bring one ModelDeployment's children and status in line with its spec.

    `options`: the operator's settings that change what is rendered (Prometheus URL, rule
    labels); the cluster's facts (installed CRDs) and the measured startup time are added here.

    `defer_status`: when this reconcile had to write children, leave status to the next one
    (`Outcome.status_deferred`), which sees what the controllers made of them; a burst of new
    ModelDeployments then gets all its children before any status write.
    """
    metadata = body["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    generation = int(metadata.get("generation") or 0)
    previous = (body.get("status") or {}).get("conditions") or []
    try:
        spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        message = validation_message(error)
        conditions = merge_conditions(
            previous, [Condition(READY, "False", INVALID_SPEC, message)], generation, now()
        )
        invalid = ModelDeploymentStatus.model_validate(
            {"observedGeneration": generation, "conditions": conditions}
        )
        await _write_status(kube, body, status_of(invalid))
        raise InvalidSpecError(message) from error

    owner = Owner(name=name, namespace=namespace, uid=metadata.get("uid"))
    installed = frozenset([crd for crd in OPTIONAL_CRDS if await kube.crd_installed(crd)])
    measured = (body.get("status") or {}).get("measuredStartupSeconds")
    options = dataclasses.replace(
        options, installed_crds=installed, measured_startup_seconds=measured
    )
    caches = await _caches(kube, namespace, spec, body, reads)
    spec, cache, waiting, canary_cache = caches.spec, caches.stable, caches.waiting, caches.canary
    canary = await canary_control.decide(
        kube,
        prometheus,
        owner,
        spec,
        previous=(body.get("status") or {}).get("canary"),
        options=options,
        now=now(),
        cached=reads.cached(DEPLOYMENT),
        cached_model=None
        if canary_cache is None
        else functools.partial(model_cache_use.cached_model, use=canary_cache),
        model_waiting=canary_cache is not None and not canary_cache.ready,
    )
    # A model whose cache is still downloading gets no pods: none would find its files.
    options = dataclasses.replace(
        options, canary=canary.plan, stable_replicas=0 if waiting else canary.stable_replicas
    )
    surge = await canary_control.surge_room(
        kube, owner, canary.stable_spec, options, cached=reads.cached(DEPLOYMENT)
    )
    rendered = render(owner, canary.stable_spec, dataclasses.replace(options, surge=surge))
    outcome = Outcome(ready="Unknown", reason="")

    live_children = await _apply_children(kube, rendered.children, outcome, reads)
    # Kinds the cluster serves; of a kind whose CRD is gone nothing can be left to delete.
    served = [kind for kind in CHILD_KINDS if kind.crd is None or kind.crd in installed]
    await _delete_unwanted(kube, served, live_children, owner, outcome, reads=reads)
    # A canary decision (a step, a window's verdict, a rollback) is written at once: the next
    # reconcile decides from the status, and must not take the same decision again.
    if defer_status and outcome.writes and not canary.decided:
        outcome.status_deferred = True
        return outcome

    pods = await kube.list_pods(namespace, instance_labels(name), cached=reads.cached(POD))
    deployment = live_children.get((DEPLOYMENT.kind, name))
    await _retire_orphaned(kube, owner, deployment, pods, outcome)
    observed = observe(
        deployment=deployment,
        pods=[pod for pod in pods if _variant(pod) != CANARY],
        suspended=spec.suspend,
        autoscaling_wanted=spec.autoscaling is not None,
        autoscaler=live_children.get((HORIZONTAL_POD_AUTOSCALER.kind, name))
        or live_children.get((SCALED_OBJECT.kind, name)),
        autoscaler_problem=_autoscaler_problem(rendered),
        monitoring_wanted=_monitoring_wanted(spec),
        skipped=rendered.skipped,
    )
    startup = startup_seconds(pods)
    current = observed.conditions + canary.conditions
    if cache is not None:
        current = _with_cache(current, cache, waiting=waiting)
    conditions = merge_conditions(previous, current, generation, now())
    status = status_of(
        ModelDeploymentStatus.model_validate(
            {
                "observedGeneration": generation,
                "conditions": conditions,
                "replicas": observed.replicas,
                "readyReplicas": observed.ready_replicas,
                "updatedReplicas": observed.updated_replicas,
                "desiredReplicas": observed.desired_replicas,
                "gpu": _gpu_summary(spec),
                "ready": f"{observed.ready_replicas}/{observed.desired_replicas}",
                "selector": instance_selector(name),
                "url": service_url(owner, spec.service.port),
                "resolved": _resolved(rendered, cache),
                # Kept while no pod is ready to measure; absent until one has been.
                "measuredStartupSeconds": (
                    measured if startup is None else round_up_startup(startup)
                ),
                "canary": canary.status,
            }
        )
    )
    outcome.status_written = await _write_status(kube, body, status)
    for event in canary.events:
        await kube.post_event(body, *event)
    outcome.requeue_after = canary.requeue_after
    ready = find(conditions, READY) or {}
    outcome.ready = ready.get("status", "Unknown")
    outcome.reason = ready.get("reason", "")
    return outcome


def namespace_going_away(error: ApiError) -> bool:
    """Whether the API refused because the namespace is terminating or gone (nothing to fix)."""
    message = error.status.message or ""
    terminating = error.status.code == FORBIDDEN and "is being terminated" in message
    gone = error.status.code == NOT_FOUND and message.startswith("namespaces ")
    return terminating or gone


def retry_delay(error: Exception, delay_seconds: float) -> float | None:
    """The error policy, in one place: how long until a failed reconcile is retried (None: not
    until something changes). An invalid spec waits for an edit (its condition is in status); a
    namespace going away takes the ModelDeployment with it; anything else (API errors, transport
    errors, a kind no longer served) is transient. 409 conflicts were already retried in `kube`."""
    if isinstance(error, InvalidSpecError):
        return None
    if isinstance(error, ApiError) and namespace_going_away(error):
        return None
    return delay_seconds


class Reconciler:
    """Runs `reconcile` per ModelDeployment from a work queue.

    A key is queued at most once; a trigger for a key that is being reconciled marks it to run
    once more afterwards; triggers wait `debounce_seconds` before a worker takes them, and
    `workers` keys are reconciled at once. A burst of events for one ModelDeployment (its
    children's and pods') thus becomes one reconcile, never two running side by side.
    """

    # The kind this queue reconciles (its children are named by their instance label).
    OWN_KIND: tuple[str, str] = (API_VERSION, KIND)

    def __init__(
        self,
        kube: Kube,
        *,
        workers: int = 16,
        debounce_seconds: float = 0.0,
        retry_delay_seconds: float = 5.0,
        options: RenderOptions = RenderOptions(),  # noqa: B008 - frozen, so safe to share
    ) -> None:
        self.kube = kube
        self._options = options
        self._prometheus = Prometheus(options.prometheus_url) if options.prometheus_url else None
        self._workers = workers
        self._debounce = debounce_seconds
        self._retry_delay = retry_delay_seconds
        self._pending: dict[Key, Reads] = {}  # queued, or waiting out the debounce
        self._ready: asyncio.Queue[Key] = asyncio.Queue()
        self._running: dict[Key, Reads | None] = {}  # a trigger that came meanwhile, if any
        self._seen: set[Key] = set()  # reconciled at least once by this process
        self._deferred: set[Key] = set()  # the last reconcile left status to the next

    def notice(self, api_version: str, kind: str, event_type: str | None, item: Object) -> None:
        """A watch event: keep the object and queue its ModelDeployment if anything changed."""
        if self.kube.cache is None:
            raise RuntimeError("noticing watch events needs a Kube with a cache")
        metadata = item["metadata"]
        namespace = metadata.get("namespace", "")
        own = (api_version, kind) == self.OWN_KIND
        owner = metadata["name"] if own else (metadata.get("labels") or {}).get(LABEL_INSTANCE)
        if event_type == "DELETED":
            changed = self.kube.cache.remove(api_version, kind, item)
            if own:
                self.forget(namespace, metadata["name"])
                return
        else:
            changed = self.kube.cache.put(api_version, kind, item)
        if changed and owner:
            self.enqueue(namespace, owner)

    def enqueue(
        self, namespace: str, name: str, reads: Reads = Reads.CACHE, delay: float | None = None
    ) -> None:
        """Queue a reconcile of one ModelDeployment (after `delay`, default the debounce)."""
        key = (namespace, name)
        if key in self._running:
            again = self._running[key]
            self._running[key] = reads if again is None else max(again, reads)
            return
        if key in self._pending:
            self._pending[key] = max(self._pending[key], reads)
            return
        self._pending[key] = reads
        wait = self._debounce if delay is None else delay
        if wait > 0:
            asyncio.get_running_loop().call_later(wait, self._ready.put_nowait, key)
        else:
            self._ready.put_nowait(key)

    async def close(self) -> None:
        """Close the Prometheus client (the API client is the caller's)."""
        if self._prometheus is not None:
            await self._prometheus.close()

    @property
    def idle(self) -> bool:
        """Whether nothing is queued or running."""
        return not self._pending and not self._running

    async def run(self) -> None:
        """Work the queue with `workers` tasks until cancelled."""
        async with asyncio.TaskGroup() as group:
            for _ in range(self._workers):
                group.create_task(self._work())

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            reads = self._pending.pop(key, None)
            if reads is None:
                continue  # forgotten while it waited
            self._running[key] = None
            retry: float | None = None
            later: float | None = None
            try:
                outcome = await self.reconcile_key(*key, reads)
                later = None if outcome is None else outcome.requeue_after
            except Exception as error:  # the policy decides; the worker goes on
                retry = retry_delay(error, self._retry_delay)
                if retry is not None or isinstance(error, InvalidSpecError):
                    logger.warning("reconcile of %s/%s failed: %s", *key, _describe(error))
            finally:
                again = self._running.pop(key)
            if again is not None:
                self.enqueue(*key, reads=max(again, reads) if retry is not None else again)
            elif retry is not None:
                self.enqueue(*key, reads=reads, delay=retry)
            elif later is not None:
                self.enqueue(*key, delay=later)

    async def reconcile_key(
        self, namespace: str, name: str, reads: Reads = Reads.CACHE
    ) -> Outcome | None:
        """Reconcile the ModelDeployment as it is now; None if it is gone or going away.

        Its first reconcile in this process reads its children from the API, unless it has no
        status yet (nothing has reconciled it, so there is nothing to read).
        """
        key = (namespace, name)
        body = await self.kube.get_model_deployment(namespace, name, cached=reads is not Reads.API)
        if body is None:
            self.forget(namespace, name)
            return None
        if body["metadata"].get("deletionTimestamp"):
            return None  # going away; owner references take the children with it
        if key not in self._seen and body.get("status"):
            reads = Reads.API
        outcome = await self._measured(body, reads, defer_status=key not in self._deferred)
        self._seen.add(key)
        if outcome.status_deferred:
            # Deferred at most once in a row, so status is written even if a child always
            # differed; the re-queued reconcile runs after the triggers already waiting.
            self._deferred.add(key)
            self.enqueue(namespace, name)
        else:
            self._deferred.discard(key)
        return outcome

    async def _measured(self, body: Object, reads: Reads, *, defer_status: bool) -> Outcome:
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        started = time.perf_counter()
        try:
            outcome = await reconcile(
                self.kube,
                body,
                reads=reads,
                defer_status=defer_status,
                options=self._options,
                prometheus=self._prometheus,
            )
        except InvalidSpecError:
            metrics.record_reconcile(key, "invalid", time.perf_counter() - started, ready="False")
            raise
        except Exception:
            metrics.record_reconcile(key, "error", time.perf_counter() - started, ready=None)
            raise
        ready = None if outcome.status_deferred else outcome.ready
        metrics.record_reconcile(key, "success", time.perf_counter() - started, ready=ready)
        return outcome

    def forget(self, namespace: str, name: str) -> None:
        """Drop bookkeeping for a deleted ModelDeployment."""
        key = (namespace, name)
        self._pending.pop(key, None)
        self._seen.discard(key)
        self._deferred.discard(key)
        metrics.forget(key)


def _describe(error: Exception) -> str:
    if isinstance(error, ApiError):
        return f"API error {error.status.code}: {error.status.message}"
    return f"{type(error).__name__}: {error}"
