"""kopf handlers: thin entry points that hand watch events to the `Reconciler`.

kopf is our watch multiplexer, not our state machine: every event of a ModelDeployment and of its
Deployments, Pods, Services, HPAs and PDBs (selected by our managed-by label) goes to
`Reconciler.notice`, which keeps the object in the cache and queues the owner's reconcile when
something changed; a ModelCache's events and its claim's, Job's and download pods' go to the
`CacheReconciler` the same way, and a cache whose status changed re-queues its namespace's
ModelDeployments. There are no kopf change handlers (create/update/resume), so kopf writes
nothing of its own to ModelDeployments (no last-handled-configuration, no progress, no
finalizers); level-based reconciles need none of it, and retries are the work queue's.

A namespace glob (`--namespace 'team-*'`) is served by cluster-wide watches whose events are
filtered here (`kopf_scope`), not by kopf's own namespace tracking (kopf 1.45's
`namespace_observer`): it lists namespaces, then opens a watch that lists them again and ignores
what that second listing adds, so a matching namespace created between the two (a test's namespace,
created as the operator starts) would never be watched, and its ModelDeployments would never see
their Deployments and pods become ready.

A resync loop started at startup re-queues every ModelDeployment periodically, reading the kinds
nobody watches (NetworkPolicy, ServiceMonitor) from the API to catch their drift. It is our own
task rather than `@kopf.timer` because kopf puts a finalizer on every object with a timer, and
nothing outside Kubernetes needs cleaning up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
from dataclasses import dataclass, field
from typing import Any, TypedDict

import kopf
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from modelplane_operator import metrics
from modelplane_operator.cache import ObjectCache
from modelplane_operator.kinds import WATCHED_KINDS
from modelplane_operator.kube import Kube
from modelplane_operator.leader import LeaderElector, LeadershipLostError, LeaseConfig
from modelplane_operator.model_cache_api import API_VERSION as CACHE_API_VERSION
from modelplane_operator.model_cache_api import KIND as CACHE_KIND
from modelplane_operator.model_cache_api import PLURAL as CACHE_PLURAL
from modelplane_operator.model_cache_reconcile import CacheReconciler
from modelplane_operator.models import API_VERSION, GROUP, KIND, PLURAL, VERSION
from modelplane_operator.names import (
    CACHE_APP_NAME,
    FIELD_MANAGER,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
)
from modelplane_operator.reconcile import Reads, Reconciler
from modelplane_operator.render import RenderOptions
from modelplane_operator.settings import OperatorSettings, kopf_settings

registry = kopf.OperatorRegistry()
MANAGED: dict[str, Any] = {
    LABEL_MANAGED_BY: FIELD_MANAGER,
    LABEL_INSTANCE: kopf.PRESENT,
}


@dataclass
class OperatorContext:
    """Everything the handlers share, kept in kopf's memo rather than in module globals."""

    settings: OperatorSettings
    reconciler: Reconciler | None = None
    caches: CacheReconciler | None = None
    client: AsyncClient | None = None
    leading: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def active(self) -> Reconciler:
        """The reconciler, once startup has created it."""
        if self.reconciler is None:
            raise kopf.TemporaryError("the operator is still starting", delay=1)
        return self.reconciler

    @property
    def active_caches(self) -> CacheReconciler:
        """The ModelCaches' reconciler, once startup has created it."""
        if self.caches is None:
            raise kopf.TemporaryError("the operator is still starting", delay=1)
        return self.caches

    def queues(self) -> list[Reconciler]:
        """Both work queues (ModelDeployments', ModelCaches'), once started."""
        return [queue for queue in (self.reconciler, self.caches) if queue is not None]


def context_of(memo: Any) -> OperatorContext:
    """The operator's context from kopf's memo."""
    context = memo.context
    if not isinstance(context, OperatorContext):
        raise TypeError("memo.context must be an OperatorContext")
    return context


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> Any:
    """In-cluster service account first, then KUBECONFIG (local runs and tests)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup(registry=registry)
async def startup(memo: Any, logger: Any, **_: Any) -> None:
    """Create the API client and the reconciler; start the resync loop."""
    context = context_of(memo)
    settings = context.settings
    context.client = AsyncClient(
        config=KubeConfig.from_env(), lazy=False, field_manager=FIELD_MANAGER
    )
    kube = Kube(
        context.client,
        conflict_retries=settings.conflict_retries,
        cache=ObjectCache(),
        crd_refresh_seconds=settings.crd_refresh_seconds,
    )
    context.reconciler = Reconciler(
        kube,
        workers=settings.workers,
        debounce_seconds=settings.debounce_seconds,
        retry_delay_seconds=settings.retry_delay_seconds,
        options=RenderOptions(
            prometheus_url=settings.prometheus_url, rule_labels=settings.rule_labels
        ),
    )
    context.caches = CacheReconciler(
        kube,
        workers=settings.workers,
        debounce_seconds=settings.debounce_seconds,
        retry_delay_seconds=settings.retry_delay_seconds,
    )
    context.caches.on_status_change = functools.partial(_requeue_namespace, context)
    if settings.leader_election:
        elector = LeaderElector(
            context.client,
            LeaseConfig(
                name=settings.lease_name,
                namespace=settings.lease_namespace,
                identity=settings.identity,
                lease_seconds=settings.lease_seconds,
                renew_deadline_seconds=settings.renew_deadline_seconds,
                retry_seconds=settings.lease_retry_seconds,
            ),
        )
        context.tasks.append(asyncio.create_task(_lead_forever(context, elector, logger)))
    else:
        metrics.LEADER.set(1)
        context.leading = True
        for queue in context.queues():
            context.tasks.append(asyncio.create_task(queue.run()))
    context.tasks.append(asyncio.create_task(_resync_forever(context, logger)))


@kopf.on.cleanup(registry=registry)
async def cleanup(memo: Any, **_: Any) -> None:
    """Stop the resync loop and close the clients (the API's, Prometheus')."""
    context = context_of(memo)
    for task in context.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    context.tasks.clear()
    for queue in context.queues():
        await queue.close()
    if context.client is not None:
        await context.client.close()


def _notice(memo: Any, api_version: str, kind: str, event: Any) -> None:
    # Handlers are coroutines so that kopf runs them on the loop, not in its thread pool.
    context = context_of(memo)
    item = event["object"]
    # Watches are cluster-wide for a glob (see `kopf_scope`): other namespaces are not ours.
    if not _watched(item["metadata"].get("namespace", ""), context.settings.namespaces):
        return
    labels = item["metadata"].get("labels") or {}
    if kind == CACHE_KIND or labels.get(LABEL_NAME) == CACHE_APP_NAME:
        context.active_caches.notice(api_version, kind, event.get("type"), item)
        if kind == CACHE_KIND and event.get("type") == "DELETED":
            # Its ModelDeployments say it is gone (no reconcile of it follows a deletion).
            _requeue_namespace(context, item["metadata"].get("namespace", ""))
    else:
        context.active.notice(api_version, kind, event.get("type"), item)


def _requeue_namespace(context: OperatorContext, namespace: str) -> None:
    """A ModelCache's status changed: its namespace's ModelDeployments may wait for or use it."""
    reconciler = context.active
    cache = reconciler.kube.cache
    held = [] if cache is None else cache.in_namespace(API_VERSION, KIND, namespace)
    for body in held:
        reconciler.enqueue(namespace, body["metadata"]["name"])


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
async def model_deployment_event(memo: Any, event: Any, **_: Any) -> None:
    """Any change of a ModelDeployment (ours included; the cache drops echoes of our writes)."""
    _notice(memo, API_VERSION, KIND, event)


@kopf.on.event(GROUP, VERSION, CACHE_PLURAL, registry=registry)
async def model_cache_event(memo: Any, event: Any, **_: Any) -> None:
    """Any change of a ModelCache."""
    _notice(memo, CACHE_API_VERSION, CACHE_KIND, event)


def child_event(api_version: str, kind: str) -> Any:
    """The handler for one watched child kind: its owner is named by the instance label."""

    async def child_changed(memo: Any, event: Any, **_: Any) -> None:
        _notice(memo, api_version, kind, event)

    child_changed.__name__ = child_changed.__qualname__ = f"{kind.lower()}_event"
    return child_changed


for _kind in WATCHED_KINDS:
    kopf.on.event(_kind.api_version, _kind.plural, labels=MANAGED, registry=registry)(
        child_event(_kind.api_version, _kind.kind)
    )


def _cluster_wide(patterns: list[str]) -> bool:
    """Whether the patterns need cluster-wide reads: none (everything) or any glob among them."""
    return not patterns or any(char in pattern for pattern in patterns for char in "*?[")


class KopfScope(TypedDict):
    """What `kopf.operator` watches: `**kopf_scope(settings)` goes into its keyword arguments."""

    clusterwide: bool
    namespaces: list[str]


def kopf_scope(settings: OperatorSettings) -> KopfScope:
    """kopf's watch scope for our namespace patterns.

    A glob is watched cluster-wide and filtered in `_notice`: kopf's own tracking of namespaces
    would lose one created while it starts (see the module docstring), whereas each kind's watch
    lists before it watches and so loses nothing. Plain names are watched one by one, which is all
    a Role in each of them allows; kopf's tracking has the same gap for them, but such a
    namespace exists before the operator starts, as its Role does.
    """
    patterns = list(settings.namespaces)
    if _cluster_wide(patterns):
        return KopfScope(clusterwide=True, namespaces=[])
    return KopfScope(clusterwide=False, namespaces=patterns)


def _listing_scopes(patterns: list[str]) -> list[str | None]:
    """Namespaces to list for a resync: each plain name, or everything (None) for a glob."""
    return [None] if _cluster_wide(patterns) else list(patterns)


def _watched(namespace: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(namespace, pattern) for pattern in patterns)


async def _lead_forever(context: OperatorContext, elector: LeaderElector, logger: Any) -> None:
    """Reconcile only while holding the Lease. Watches run all along (a warm cache); when the
    Lease cannot be renewed in time the workers are cancelled at once, before another replica may
    take over, and this replica becomes a candidate again (if the API was only away, it finds the
    Lease still its own and goes on, without a restart)."""
    identity = elector.config.identity
    while True:
        await elector.acquire()
        context.leading = True
        metrics.LEADER.set(1)
        logger.info(f"{identity} leads: reconciling")
        working = [asyncio.create_task(queue.run()) for queue in context.queues()]
        first_pass = asyncio.create_task(
            _until_listed(context, Reads.API, elector.config.retry_seconds, logger)
        )
        try:
            await elector.hold()
        except LeadershipLostError as error:
            logger.warning(f"{error}: stopped reconciling; a candidate again")
        finally:
            context.leading = False
            metrics.LEADER.set(0)
            for task in (first_pass, *working):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _until_listed(context: OperatorContext, reads: Reads, pause: float, logger: Any) -> None:
    """A new leader's first pass over every ModelDeployment, retried until the list succeeds
    (right after an apiserver restart it answers "storage is (re)initializing" for a while)."""
    while True:
        if await _enqueue_all(context, reads, logger):
            return
        await asyncio.sleep(pause)


async def _enqueue_all(context: OperatorContext, reads: Reads, logger: Any) -> bool:
    """Queue every watched ModelDeployment and ModelCache (the resync, and a new leader's first
    pass); False when a listing failed (refused, unreachable, timed out: the next pass will do)."""
    patterns = list(context.settings.namespaces)
    kube = context.active.kube
    listings = (
        ("ModelDeployments", kube.list_model_deployments, context.active),
        ("ModelCaches", kube.list_model_caches, context.active_caches),
    )
    listed = True
    for scope in _listing_scopes(patterns):
        for what, listing, queue in listings:
            try:
                bodies = await listing(scope)
            except Exception as error:
                logger.warning(f"could not list {what}: {error}")
                listed = False
                continue
            for body in bodies:
                metadata = body["metadata"]
                if _watched(metadata["namespace"], patterns):
                    queue.enqueue(metadata["namespace"], metadata["name"], reads)
    return listed


async def _resync_forever(context: OperatorContext, logger: Any) -> None:
    while True:
        await asyncio.sleep(context.settings.resync_seconds)
        if context.leading:  # a standby's queue would only fill up
            await _enqueue_all(context, Reads.RESYNC, logger)


# aiohttp closes an SSL connection asynchronously after its session closes; a loop closed sooner
# leaves the transport to the garbage collector ("unclosed transport" ResourceWarnings). aiohttp's
# documented graceful shutdown waits this long before the loop goes.
SSL_CLOSE_GRACE_SECONDS = 0.25


async def operate(settings: OperatorSettings, context: OperatorContext, **options: Any) -> None:
    """kopf's operator with our registry, settings and watch scope, as `modelplane-operator run`
    and the tests run it; `options` go to `kopf.operator` (liveness endpoint, ready/stop flags)."""
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings(settings),
            memo=kopf.Memo(context=context),
            standalone=True,
            **kopf_scope(settings),
            **options,
        )
    finally:
        await asyncio.sleep(SSL_CLOSE_GRACE_SECONDS)
