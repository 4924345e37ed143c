"""Test tiers and the real Kubernetes control plane that `k8s` tests run against.

The `cluster` fixture, in order of preference:
1. `MODELPLANE_TEST_KUBECONFIG=/path` uses that cluster (never plain KUBECONFIG: a platform
   engineer's KUBECONFIG points at a real cluster, and tests create and delete things);
2. a cluster already started with `hack/cluster.sh up` (fast inner loop);
3. otherwise it builds (cached) and starts one for the session and stops it at the end.

Helpers for tests (`Cluster`, `wait_for`) live in tests/testsupport.py:
`from testsupport import ...`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import localcluster  # hack/ is on pytest's pythonpath
from testsupport import Cluster, cluster_env, namespace_name

# Tiny and embedded models for the server, e2e and data-plane tests.
pytest_plugins = ["modelfixtures"]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    given = os.environ.get("MODELPLANE_TEST_KUBECONFIG")
    if given:
        yield Cluster(Path(given), cluster_env(Path(given)))
        return
    dev = localcluster.LocalCluster()
    running = dev.reachable()
    if running is not None:
        yield Cluster(Path(running.kubeconfig), cluster_env(Path(running.kubeconfig)))
        return
    # A pod range apart from the data-plane cluster's (tests/dataplane) in the same namespace.
    own = localcluster.LocalCluster(tmp_path_factory.mktemp("cluster"), pod_cidr="10.244.64.0/18")
    state = own.up()
    try:
        yield Cluster(Path(state.kubeconfig), cluster_env(Path(state.kubeconfig)))
    finally:
        own.down(quiet=True)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, named after it; deleted afterwards (without waiting)."""
    name = namespace_name(request.node.name)
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip)
