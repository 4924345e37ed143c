"""The data-plane tier: a cluster whose server pods are real processes, with Traefik, Prometheus and
prometheus-adapter (hack/cluster.sh up --with dataplane), and the operator running against it.

`dataplane` is one cluster for the session, separate from the control-plane-only `cluster` of the
other k8s tests (whose ModelDeployments must not start hundreds of real processes). It reuses a dev
cluster started with `hack/cluster.sh up --with dataplane` when one runs in this namespace.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataplanesupport import DataPlane
from modelplane_operator import handlers

import localcluster
from testsupport import Cluster, namespace_name, operator_thread

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"  # both CRDs; `kubectl apply -f` skips crds/samples/


def _env(kubeconfig: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _dataplane(state: localcluster.ClusterState) -> DataPlane:
    kubeconfig = Path(state.kubeconfig)
    return DataPlane(
        cluster=Cluster(kubeconfig, _env(kubeconfig)),
        gateway=state.endpoints["gateway"],
        prometheus=state.endpoints["prometheus"],
        kubelet_dir=Path(state.endpoints["kubelet_dir"]),
        prometheus_rules=Path(state.endpoints["prometheus_rules"]),
    )


@pytest.fixture(scope="session")
def dataplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    dev = localcluster.LocalCluster().reachable()
    own = None
    if dev is not None and set(dev.components) == set(localcluster.COMPONENTS):
        state = dev
    else:
        own = localcluster.LocalCluster(tmp_path_factory.mktemp("dataplane-cluster"))
        state = own.up(nodes=2, components=localcluster.COMPONENTS)
    try:
        plane = _dataplane(state)
        plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
        plane.wait_established("modeldeployments.modelplane.io")
        plane.wait_established("modelcaches.modelplane.io")
        yield plane
    finally:
        if own is not None:
            own.down(quiet=True)


@pytest.fixture(scope="module")
def dataplane_operator(dataplane: DataPlane) -> Iterator[handlers.OperatorContext]:
    """The operator, as `modelplane-operator run` runs it, in a thread, watching `test-*`."""
    with operator_thread(
        dataplane.cluster.kubeconfig, ["test-*"], prometheus_url=dataplane.prometheus
    ) as context:
        yield context


@pytest.fixture
def dp_namespace(dataplane: DataPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the data-plane cluster (`test-...`, so the operator watches it)."""
    name = namespace_name(request.node.name)
    dataplane.kubectl("create", "namespace", name)
    yield name
    dataplane.kubectl("delete", "namespace", name, "--wait=false", check=False)
