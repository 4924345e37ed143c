"""The chart's Argo CD health check (charts/modelplane/argocd/health.lua), run by gopher-lua as
Argo CD runs it, on statuses built by the operator's own condition code for every reason in the
status taxonomy. The k8s tier checks it again on statuses the running operator wrote
(tests/operator/test_operator_k8s.py)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from modelplane_operator.autoscaler_conditions import (
    KEDA_FALLBACK,
    METRIC_MISSING,
    METRICS_API_MISSING,
    METRICS_API_UNAVAILABLE,
    PROMETHEUS_URL_MISSING,
)
from modelplane_operator.conditions import Condition, merge_conditions
from modelplane_operator.diagnose import FAILURE_REASONS

from testsupport import ARGOCD_HEALTH_LUA, ROOT, argocd_health

NOW = "2026-12-06T00:00:00Z"


def model_deployment(
    *conditions: Condition, generation: int = 2, observed: int = 2
) -> dict[str, Any]:
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns", "generation": generation},
        "spec": {"model": {"uri": "hf://o/m"}},
        "status": {
            "observedGeneration": observed,
            "conditions": merge_conditions([], list(conditions), observed, NOW),
        },
    }


def ready(status: str, reason: str, message: str = "detail") -> Condition:
    return Condition("Ready", status, reason, message)


CASES = [
    *[
        (reason, model_deployment(ready("False", reason)), "Degraded")
        for reason in sorted(FAILURE_REASONS)
    ],
    *[
        (reason, model_deployment(ready("False", reason)), "Progressing")
        for reason in ("Creating", "Starting", "Suspending")
    ],
    ("Unknown", model_deployment(ready("Unknown", "Pending")), "Progressing"),
    ("Serving", model_deployment(ready("True", "Serving", "2/2 replicas ready")), "Healthy"),
    ("ScaledToZero", model_deployment(ready("True", "ScaledToZero")), "Healthy"),
    ("Suspended", model_deployment(ready("True", "Suspended")), "Suspended"),
    *[
        (
            f"Serving+{reason}",
            model_deployment(
                ready("True", "Serving"), Condition("AutoscalerReady", "False", reason, "words")
            ),
            "Degraded",
        )
        for reason in (
            METRICS_API_MISSING,
            METRICS_API_UNAVAILABLE,
            METRIC_MISSING,
            KEDA_FALLBACK,
            PROMETHEUS_URL_MISSING,
            "CRDNotInstalled",
        )
    ],
    (
        "Serving+MonitoringCRDNotInstalled",
        model_deployment(
            ready("True", "Serving"), Condition("MonitoringReady", "False", "CRDNotInstalled", "x")
        ),
        "Healthy",
    ),
    ("stale-generation", model_deployment(ready("True", "Serving"), generation=3), "Progressing"),
    (
        "no-status",
        {
            "apiVersion": "modelplane.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m", "generation": 1},
        },
        "Progressing",
    ),
]


def test_every_reason_maps_to_an_argo_cd_health() -> None:
    answers = argocd_health(*(obj for _, obj, _ in CASES))
    got = {case: answer["status"] for (case, _, _), answer in zip(CASES, answers, strict=True)}
    assert got == {case: expected for case, _, expected in CASES}


def test_the_message_says_the_reason_and_the_operators_words() -> None:
    (degraded, healthy) = argocd_health(
        model_deployment(ready("False", "InsufficientGPU", "0/4 nodes have 16 nvidia.com/gpu")),
        model_deployment(ready("True", "Serving", "2/2 replicas ready")),
    )
    assert degraded["message"] == "InsufficientGPU: 0/4 nodes have 16 nvidia.com/gpu"
    assert healthy["message"] == "Serving: 2/2 replicas ready"


def test_the_argocd_cm_snippet_ships_the_same_script() -> None:
    snippet = yaml.safe_load(
        (ROOT / "charts" / "modelplane" / "argocd" / "argocd-cm.yaml").read_text()
    )
    assert snippet["data"]["resource.customizations.health.modelplane.io_ModelDeployment"] == (
        ARGOCD_HEALTH_LUA.read_text()
    )


@pytest.mark.parametrize("reason", sorted(FAILURE_REASONS))
def test_failure_reasons_are_documented_for_argo_cd_users(reason: str) -> None:
    assert f"`{reason}`" in (ROOT / "docs" / "operations.md").read_text()
