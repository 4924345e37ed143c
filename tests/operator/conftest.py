"""Fixtures for operator tests: the CRD installed in the test cluster and an in-process operator.

The operator runs exactly as `modelplane-operator run` does (same registry, settings and memo) in a
thread of this process, one per test module, reconciling only in the tests' namespaces (`test-*`:
tests/conftest.py names them after the test), with short resync and retry delays. Being a glob,
`test-*` is watched cluster-wide (`handlers.kopf_scope`), so a namespace a test creates while the
operator is still starting is watched like any other.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kopf
import pytest

from modelplane_operator import handlers
from modelplane_operator.settings import OperatorSettings, kopf_settings

from testsupport import Cluster, wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "modeldeployments.modelplane.io.yaml"
TEST_NAMESPACES = "test-*"


@pytest.fixture(scope="session")
def modeldeployment_crd(cluster: Cluster) -> None:
    """The CRD, server-side applied (idempotent) and established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/modeldeployments.modelplane.io", "--timeout=60s"
    )


@dataclass
class RunningOperator:
    settings: OperatorSettings
    context: handlers.OperatorContext


@pytest.fixture(scope="module")
def running_operator(cluster: Cluster, modeldeployment_crd: None) -> Iterator[RunningOperator]:
    # Only test-*: ModelDeployments outside the tests' namespaces (a demo's) are not ours.
    settings = OperatorSettings(
        namespaces=[TEST_NAMESPACES],
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
                    ready_flag=ready,
                    stop_flag=stop,
                    **handlers.kopf_scope(settings),
                )
            )
        except BaseException as error:  # surfaced to the test below, not lost in the thread
            failure.append(error)
            ready.set()

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(cluster.kubeconfig))
        thread = threading.Thread(target=run, name="modelplane-operator", daemon=True)
        thread.start()
        assert ready.wait(60), "the operator did not start within 60 s"
        assert not failure, f"the operator failed to start: {failure}"
        wait_for(lambda: context.reconciler is not None, timeout=30, what="operator startup")
        try:
            yield RunningOperator(settings=settings, context=context)
        finally:
            stop.set()
            thread.join(timeout=30)
    assert not failure, f"the operator crashed: {failure}"
