"""Fixtures for operator tests: the CRD installed in the test cluster and an in-process operator.

The operator runs exactly as `modelplane-operator run` does (same registry, settings and memo) in a
thread of this process, one per test module, reconciling only in the tests' namespaces (`test-*`:
tests/conftest.py names them after the test), with short resync and retry delays. Being a glob,
`test-*` is watched cluster-wide (`handlers.kopf_scope`), so a namespace a test creates while the
operator is still starting is watched like any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelplane_operator import handlers
from modelplane_operator.settings import OperatorSettings

from testsupport import Cluster, operator_thread

ROOT = Path(__file__).resolve().parents[2]
# Both CRDs (ModelDeployment, ModelCache): `kubectl apply -f crds/` skips crds/samples/.
CRD_DIR = ROOT / "crds"
TEST_NAMESPACES = "test-*"
# Rendered into KEDA ScaledObjects; no Prometheus answers there in the k8s tier (nor need it: KEDA
# itself does not run, the apiserver validates what the operator renders against KEDA's CRD).
PROMETHEUS_URL = "http://prometheus.monitoring.svc:9090"
RULE_LABELS = {"release": "modelplane-tests"}


@pytest.fixture(scope="session")
def modeldeployment_crd(cluster: Cluster) -> None:
    """The CRD, server-side applied (idempotent) and established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    cluster.wait_established("modeldeployments.modelplane.io")
    cluster.wait_established("modelcaches.modelplane.io")


@dataclass
class RunningOperator:
    settings: OperatorSettings
    context: handlers.OperatorContext


@pytest.fixture(scope="module")
def running_operator(cluster: Cluster, modeldeployment_crd: None) -> Iterator[RunningOperator]:
    # Only test-*: ModelDeployments outside the tests' namespaces (a demo's) are not ours.
    with operator_thread(
        cluster.kubeconfig,
        [TEST_NAMESPACES],
        prometheus_url=PROMETHEUS_URL,
        rule_labels=RULE_LABELS,
    ) as context:
        yield RunningOperator(settings=context.settings, context=context)
