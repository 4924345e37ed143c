"""What every child shares: the owner it belongs to, the options that change rendering, its
metadata (name, labels, owner reference) and the manifest envelope.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightkube.models.core_v1 import Capabilities, SeccompProfile, SecurityContext
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference

from modelplane_operator.models import API_VERSION, KIND, HeaderMatch, ModelDeploymentSpec
from modelplane_operator.names import VARIANT_LABEL, Variant, child_labels

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment the children belong to. Without a uid (a preview render) the children
    carry no owner reference."""

    name: str
    namespace: str
    uid: str | None = None
    kind: str = KIND  # the owner's kind: a ModelDeployment, or a ModelCache for its children


@dataclass(frozen=True)
class RenderOptions:
    """Facts about the cluster that change what is rendered: which add-on CRDs are installed
    (children of a kind whose CRD is missing are left out, and `Rendered.skipped` says so)."""

    installed_crds: frozenset[str] = frozenset()
    # The Prometheus HTTP API KEDA's triggers query (operator setting prometheusUrl).
    prometheus_url: str | None = None
    # Labels on every PrometheusRule, for the Prometheus' ruleSelector.
    rule_labels: Mapping[str, str] = field(default_factory=dict)
    # status.measuredStartupSeconds: the autoscaler's windows derive from it.
    measured_startup_seconds: int | None = None
    # The canary, when one runs (reconcile decides its replicas and weight).
    canary: CanaryPlan | None = None
    # Stable's replicas while it lends GPUs to the canary (None: as the spec says).
    stable_replicas: int | None = None
    # False when no GPU is free for a surge pod: stable's rolling update replaces pods in place.
    surge: bool = True


@dataclass(frozen=True)
class CanaryPlan:
    """What the canary variant gets: its whole spec (stable's with the overlay), its replicas,
    the percent of requests routed to it, and the header rule once it is ready."""

    spec: ModelDeploymentSpec
    replicas: int
    weight: int
    header: HeaderMatch | None = None


def metadata(
    owner: Owner,
    name: str | None = None,
    variant: Variant | None = None,
    labels: dict[str, str] | None = None,
) -> ObjectMeta:
    """A child's metadata: its name (default: the owner's), our labels (`labels`, else a
    ModelDeployment's; plus the variant's, for a variant's own child), the controller owner
    reference."""
    references = None
    if owner.uid:
        references = [
            OwnerReference(
                apiVersion=API_VERSION,
                kind=owner.kind,
                name=owner.name,
                uid=owner.uid,
                controller=True,
                blockOwnerDeletion=True,
            )
        ]
    labels = dict(labels) if labels is not None else child_labels(owner.name)
    if variant is not None:
        labels[VARIANT_LABEL] = variant
    return ObjectMeta(
        name=name or owner.name,
        namespace=owner.namespace,
        labels=labels,
        ownerReferences=references,
    )


def manifest(api_version: str, kind: str, metadata: ObjectMeta, spec: Any) -> Manifest:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": metadata.to_dict(),
        "spec": spec.to_dict() if hasattr(spec, "to_dict") else spec,
    }


def container_security() -> SecurityContext:
    return SecurityContext(
        allowPrivilegeEscalation=False,
        capabilities=Capabilities(drop=["ALL"]),
        runAsNonRoot=True,
        seccompProfile=SeccompProfile(type="RuntimeDefault"),
    )
