"""The data-plane tier: a cluster whose server pods are real processes, with Traefik, Prometheus and
prometheus-adapter (hack/cluster.sh up --with dataplane), and the operator running against it.

`dataplane` is one cluster for the session, separate from the control-plane-only `cluster` of the
other k8s tests (whose ModelDeployments must not start hundreds of real processes). It reuses a dev
cluster started with `hack/cluster.sh up --with dataplane` when one runs in this namespace.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest

from dataplanesupport import DataPlane
from modelplane_operator import handlers
from modelplane_operator.settings import OperatorSettings, kopf_settings

import localcluster
from testsupport import Cluster, namespace_name, wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "modeldeployments.modelplane.io.yaml"


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
        plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
        plane.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.modelplane.io")
        yield plane
    finally:
        if own is not None:
            own.down(quiet=True)


@pytest.fixture(scope="module")
def dataplane_operator(dataplane: DataPlane) -> Iterator[handlers.OperatorContext]:
    """The operator, as `modelplane-operator run` runs it, in a thread, watching `test-*`."""
    settings = OperatorSettings(
        namespaces=["test-*"],
        resync_seconds=3,
        retry_delay_seconds=1,
        crd_refresh_seconds=2,
        metrics_port=0,
        health_port=0,
    )
    context = handlers.OperatorContext(settings=settings)
    ready, stop = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=handlers.registry,
                    settings=kopf_settings(settings),
                    memo=kopf.Memo(context=context),
                    standalone=True,
                    namespaces=settings.namespaces,
                    ready_flag=ready,
                    stop_flag=stop,
                )
            )
        except BaseException as error:  # surfaced to the test, not lost in the thread
            failure.append(error)
            ready.set()

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(dataplane.cluster.kubeconfig))
        thread = threading.Thread(target=run, name="modelplane-operator", daemon=True)
        thread.start()
        assert ready.wait(60), "the operator did not start within 60 s"
        assert not failure, f"the operator failed to start: {failure}"
        wait_for(lambda: context.reconciler is not None, timeout=30, what="operator startup")
        try:
            yield context
        finally:
            stop.set()
            thread.join(timeout=30)
    assert not failure, f"the operator crashed: {failure}"


@pytest.fixture
def dp_namespace(dataplane: DataPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the data-plane cluster (`test-...`, so the operator watches it)."""
    name = namespace_name(request.node.name)
    dataplane.kubectl("create", "namespace", name)
    yield name
    dataplane.kubectl("delete", "namespace", name, "--wait=false", check=False)
