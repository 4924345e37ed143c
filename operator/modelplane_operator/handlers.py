"""kopf handlers: thin entry points that all end in `Reconciler.reconcile_key`.

- create/update/resume of a ModelDeployment reconcile it (kopf retries on TemporaryError);
- events of its Deployments, Pods, Services, HPAs and PDBs (selected by our managed-by label)
  re-reconcile the owner, which is what keeps status truthful and reverts hand edits promptly;
- a resync loop started at startup re-reconciles everything periodically (drift of kinds not
  watched, e.g. NetworkPolicy). It is our own task rather than `@kopf.timer` because kopf puts a
  finalizer on every object with a timer, and nothing outside Kubernetes needs cleaning up.

Error policy, in one place (`_reconcile`): an invalid spec is a PermanentError (its condition is
already in status), an API error a TemporaryError with the configured delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from lightkube import ApiError, AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from modelplane_operator.kube import NOT_FOUND, Kube
from modelplane_operator.models import GROUP, PLURAL, VERSION
from modelplane_operator.reconcile import InvalidSpecError, Reconciler
from modelplane_operator.render import FIELD_MANAGER, LABEL_INSTANCE, LABEL_MANAGED_BY
from modelplane_operator.settings import OperatorSettings

registry = kopf.OperatorRegistry()
FORBIDDEN = 403
MANAGED: dict[str, Any] = {
    LABEL_MANAGED_BY: FIELD_MANAGER,
    LABEL_INSTANCE: kopf.PRESENT,
}
WATCHED_CHILDREN = (
    ("apps/v1", "deployments"),
    ("v1", "pods"),
    ("v1", "services"),
    ("autoscaling/v2", "horizontalpodautoscalers"),
    ("policy/v1", "poddisruptionbudgets"),
)


@dataclass
class OperatorContext:
    """Everything the handlers share, kept in kopf's memo rather than in module globals."""

    settings: OperatorSettings
    reconciler: Reconciler | None = None
    client: AsyncClient | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def active(self) -> Reconciler:
        """The reconciler, once startup has created it."""
        if self.reconciler is None:
            raise kopf.TemporaryError("the operator is still starting", delay=1)
        return self.reconciler


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
    context.client = AsyncClient(
        config=KubeConfig.from_env(), lazy=False, field_manager=FIELD_MANAGER
    )
    kube = Kube(context.client, conflict_retries=context.settings.conflict_retries)
    context.reconciler = Reconciler(kube)
    context.tasks.append(asyncio.create_task(_resync_forever(context, logger)))


@kopf.on.cleanup(registry=registry)
async def cleanup(memo: Any, **_: Any) -> None:
    """Stop the resync loop and close the client."""
    context = context_of(memo)
    for task in context.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    context.tasks.clear()
    if context.client is not None:
        await context.client.close()


def namespace_going_away(error: ApiError) -> bool:
    """Whether the API refused because the namespace is terminating or gone (nothing to fix)."""
    message = error.status.message or ""
    terminating = error.status.code == FORBIDDEN and "is being terminated" in message
    gone = error.status.code == NOT_FOUND and message.startswith("namespaces ")
    return terminating or gone


async def _reconcile(context: OperatorContext, namespace: str, name: str) -> None:
    try:
        await context.active.reconcile_key(namespace, name)
    except InvalidSpecError as error:
        raise kopf.PermanentError(f"invalid spec: {error}") from error
    except ApiError as error:
        if namespace_going_away(error):
            return  # garbage collection removes the ModelDeployment and its children
        raise kopf.TemporaryError(
            f"API error {error.status.code}: {error.status.message}",
            delay=context.settings.retry_delay_seconds,
        ) from error
    except Exception as error:
        # Transport errors and non-Status HTTP errors (e.g. a kind that stopped being served
        # between discovery and use) are transient too; kopf would otherwise retry after 60 s.
        raise kopf.TemporaryError(
            f"{type(error).__name__}: {error}", delay=context.settings.retry_delay_seconds
        ) from error


@kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
@kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
@kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
async def reconcile_model_deployment(memo: Any, namespace: str | None, name: str, **_: Any) -> None:
    """Create, update and resume are the same level-based reconcile."""
    await _reconcile(context_of(memo), namespace or "", name)


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
async def model_deployment_event(
    memo: Any, type: str, namespace: str | None, name: str, **_: Any
) -> None:
    """Forget a deleted ModelDeployment (its children go with it through owner references)."""
    if type == "DELETED":
        context_of(memo).active.forget(namespace or "", name)


async def child_changed(
    memo: Any, namespace: str | None, labels: Mapping[str, str], logger: Any, **_: Any
) -> None:
    """A child or pod changed: re-reconcile its owner; errors wait for the next trigger."""
    try:
        await _reconcile(context_of(memo), namespace or "", labels[LABEL_INSTANCE])
    except (kopf.PermanentError, kopf.TemporaryError) as error:
        logger.warning(f"reconcile after a child's change failed: {error}")


for _group_version, _plural in WATCHED_CHILDREN:
    kopf.on.event(_group_version, _plural, labels=MANAGED, registry=registry)(child_changed)


def _listing_scopes(patterns: list[str]) -> list[str | None]:
    """Namespaces to list for a resync: each plain name, or everything (None) for a glob."""
    if not patterns or any(char in pattern for pattern in patterns for char in "*?["):
        return [None]
    return list(patterns)


def _watched(namespace: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(namespace, pattern) for pattern in patterns)


async def _resync_forever(context: OperatorContext, logger: Any) -> None:
    patterns = list(context.settings.namespaces)
    while True:
        await asyncio.sleep(context.settings.resync_seconds)
        for scope in _listing_scopes(patterns):
            try:
                bodies = await context.active.kube.list_model_deployments(scope)
            except ApiError as error:
                logger.warning(f"resync could not list ModelDeployments: {error}")
                continue
            for body in bodies:
                metadata = body["metadata"]
                if not _watched(metadata["namespace"], patterns):
                    continue
                try:
                    await _reconcile(context, metadata["namespace"], metadata["name"])
                except (kopf.PermanentError, kopf.TemporaryError) as error:
                    logger.warning(f"resync of {metadata['name']} failed: {error}")
