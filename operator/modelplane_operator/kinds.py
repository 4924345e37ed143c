"""The registry of kinds the operator renders or reads: one entry per kind, written once.

Everything that differs between kinds is here: how to address it (api version, kind, plural),
whether kopf delivers its changes (`watched`; the others are re-read from the API at each resync,
which is how their drift is noticed), and, for kinds that belong to an add-on, the
CustomResourceDefinition that must exist before one is rendered. Reconcile, the API access and the
watches all read this table; none of them names a kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChildKind:
    """One kind of object, as the API addresses it."""

    api_version: str
    kind: str
    plural: str
    watched: bool
    # The CRD that must be installed before an object of this kind is rendered (None: built in).
    crd: str | None = None

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def absent(self) -> str:
        """What to say when the kind's CRD is missing."""
        return f"{self.crd} is not installed; no {self.kind} was created"


DEPLOYMENT = ChildKind("apps/v1", "Deployment", "deployments", watched=True)
SERVICE = ChildKind("v1", "Service", "services", watched=True)
HORIZONTAL_POD_AUTOSCALER = ChildKind(
    "autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", watched=True
)
POD_DISRUPTION_BUDGET = ChildKind(
    "policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", watched=True
)
NETWORK_POLICY = ChildKind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", False)
PROMETHEUS_OPERATOR_GROUP = "monitoring.coreos.com"
SERVICE_MONITOR = ChildKind(
    f"{PROMETHEUS_OPERATOR_GROUP}/v1",
    "ServiceMonitor",
    "servicemonitors",
    watched=False,
    crd=f"servicemonitors.{PROMETHEUS_OPERATOR_GROUP}",
)
PROMETHEUS_RULE = ChildKind(
    f"{PROMETHEUS_OPERATOR_GROUP}/v1",
    "PrometheusRule",
    "prometheusrules",
    watched=False,
    crd=f"prometheusrules.{PROMETHEUS_OPERATOR_GROUP}",
)
SCALED_OBJECT = ChildKind(
    "keda.sh/v1alpha1", "ScaledObject", "scaledobjects", watched=False, crd="scaledobjects.keda.sh"
)
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
HTTP_ROUTE = ChildKind(
    f"{GATEWAY_API_GROUP}/v1",
    "HTTPRoute",
    "httproutes",
    watched=False,
    crd=f"httproutes.{GATEWAY_API_GROUP}",
)
# A ModelCache's children.
PERSISTENT_VOLUME_CLAIM = ChildKind(
    "v1", "PersistentVolumeClaim", "persistentvolumeclaims", watched=True
)
JOB = ChildKind("batch/v1", "Job", "jobs", watched=True)
# Not a child, but watched: the pods the Deployment makes say how the rollout is going.
POD = ChildKind("v1", "Pod", "pods", watched=True)
# Not a child either: read only while a Deployment made before the variant label retires
# (selector_migration.py).
REPLICA_SET = ChildKind("apps/v1", "ReplicaSet", "replicasets", watched=False)

# Every kind the operator renders, in the order it applies them.
CHILD_KINDS: tuple[ChildKind, ...] = (
    DEPLOYMENT,
    SERVICE,
    HORIZONTAL_POD_AUTOSCALER,
    POD_DISRUPTION_BUDGET,
    NETWORK_POLICY,
    SERVICE_MONITOR,
    PROMETHEUS_RULE,
    SCALED_OBJECT,
    HTTP_ROUTE,
)
# Every kind a ModelCache renders, in the order it applies them.
CACHE_CHILD_KINDS: tuple[ChildKind, ...] = (PERSISTENT_VOLUME_CLAIM, JOB)
WATCHED_KINDS: tuple[ChildKind, ...] = tuple(
    kind for kind in (*CHILD_KINDS, *CACHE_CHILD_KINDS, POD) if kind.watched
)
OPTIONAL_CRDS: tuple[str, ...] = tuple(kind.crd for kind in CHILD_KINDS if kind.crd is not None)
_BY_KEY = {
    (kind.api_version, kind.kind): kind
    for kind in (*CHILD_KINDS, *CACHE_CHILD_KINDS, POD, REPLICA_SET)
}


def kind_of(manifest: dict[str, Any]) -> ChildKind:
    """The registry entry of a manifest or live object."""
    return _BY_KEY[(manifest["apiVersion"], manifest["kind"])]


def child_key(manifest: dict[str, Any]) -> tuple[str, str]:
    """How reconcile tells children apart: (kind, name); a kind may have several children."""
    return manifest["kind"], manifest["metadata"]["name"]
