"""What kopf watches for our namespace patterns, and which of its events reach the reconciler."""

from __future__ import annotations

from typing import cast

import kopf
import pytest
from lightkube import AsyncClient

from modelplane_operator import handlers
from modelplane_operator.cache import ObjectCache
from modelplane_operator.kube import Kube
from modelplane_operator.models import API_VERSION, KIND
from modelplane_operator.reconcile import Reconciler
from modelplane_operator.settings import OperatorSettings


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        ([], handlers.KopfScope(clusterwide=True, namespaces=[])),
        (
            ["models", "team-a"],
            handlers.KopfScope(clusterwide=False, namespaces=["models", "team-a"]),
        ),
        # kopf's own glob handling loses a namespace created while it starts: watch everything.
        (["test-*"], handlers.KopfScope(clusterwide=True, namespaces=[])),
        (["models", "team-?"], handlers.KopfScope(clusterwide=True, namespaces=[])),
    ],
)
def test_kopf_scope(patterns: list[str], expected: handlers.KopfScope) -> None:
    assert handlers.kopf_scope(OperatorSettings(namespaces=patterns)) == expected


async def test_cluster_wide_events_outside_the_patterns_are_dropped() -> None:
    context = handlers.OperatorContext(settings=OperatorSettings(namespaces=["test-*"]))
    cache = ObjectCache()
    context.reconciler = Reconciler(Kube(cast(AsyncClient, None), cache=cache))
    memo = kopf.Memo(context=context)
    for namespace in ("demo", "test-a"):
        body = {"metadata": {"name": "m", "namespace": namespace, "resourceVersion": "1"}}
        handlers._notice(memo, API_VERSION, KIND, {"type": "ADDED", "object": body})

    assert cache.get(API_VERSION, KIND, "demo", "m") is None
    assert cache.get(API_VERSION, KIND, "test-a", "m") is not None
    assert not context.reconciler.idle  # test-a/m is queued


def test_failed_api_requests_are_retried_long_enough_to_outlast_an_apiserver_restart() -> None:
    """kopf gives up a watch for good when its retries run out; right after an apiserver restart
    watches are refused (403) until RBAC has warmed up, so the retries cover minutes, not 3 s."""
    from modelplane_operator.settings import OperatorSettings, api_backoffs, kopf_settings

    # Capped at 10 s, so a watch is back within seconds of the apiserver's return.
    assert api_backoffs(1, 300)[:6] == [1, 2, 4, 8, 10, 10]
    assert sum(api_backoffs(1, 300)) >= 300
    settings = kopf_settings(OperatorSettings(api_outage_seconds=120))
    assert sum(settings.networking.error_backoffs) >= 120


async def test_a_new_leaders_first_pass_is_retried_until_the_list_succeeds() -> None:
    """Right after an apiserver restart a list may answer "storage is (re)initializing": the
    first pass over every ModelDeployment must not be lost to it."""
    import logging

    from lightkube import ApiError
    from lightkube.models.meta_v1 import Status

    from modelplane_operator.model_cache_reconcile import CacheReconciler
    from modelplane_operator.reconcile import Reads

    class Listing(Kube):
        calls = 0

        async def list_model_deployments(self, namespace: str | None) -> list[dict[str, object]]:
            Listing.calls += 1
            if Listing.calls == 1:
                raise ApiError(status=Status(code=429, message="storage is (re)initializing"))
            return [{"metadata": {"name": "m", "namespace": "test-a"}}]

        async def list_model_caches(
            self, namespace: str | None, *, cached: bool = False
        ) -> list[dict[str, object]]:
            return []

    context = handlers.OperatorContext(settings=OperatorSettings(namespaces=["test-*"]))
    kube = Listing(cast(AsyncClient, None), cache=ObjectCache())
    context.reconciler = Reconciler(kube)
    context.caches = CacheReconciler(kube)
    await handlers._until_listed(context, Reads.API, 0.01, logging.getLogger("test"))
    assert Listing.calls == 2
    assert not context.reconciler.idle  # test-a/m is queued


async def test_a_deleted_model_cache_requeues_its_namespaces_model_deployments() -> None:
    from modelplane_operator.model_cache_api import API_VERSION as CACHE_API_VERSION
    from modelplane_operator.model_cache_api import KIND as CACHE_KIND
    from modelplane_operator.model_cache_reconcile import CacheReconciler

    context = handlers.OperatorContext(settings=OperatorSettings(namespaces=["test-*"]))
    cache = ObjectCache()
    kube = Kube(cast(AsyncClient, None), cache=cache)
    context.reconciler, context.caches = Reconciler(kube), CacheReconciler(kube)
    memo = kopf.Memo(context=context)
    md = {"metadata": {"name": "chat", "namespace": "test-a", "resourceVersion": "1"}}
    cache.put(API_VERSION, KIND, md)
    body = {"metadata": {"name": "smollm2", "namespace": "test-a", "resourceVersion": "2"}}
    handlers._notice(memo, CACHE_API_VERSION, CACHE_KIND, {"type": "ADDED", "object": body})
    assert context.reconciler.idle
    handlers._notice(memo, CACHE_API_VERSION, CACHE_KIND, {"type": "DELETED", "object": body})
    assert not context.reconciler.idle  # test-a/chat is queued: its cache is gone
    await context.caches.close()
