"""The HTTPRoute (Gateway API v1) in front of the variants: a header rule that always reaches the
canary, and a weighted rule over both variants' Services.

The route keeps the ModelDeployment's name and hostnames whatever the canary does; only the
weights move. A canary gets weight (and the header rule) only once it is ready, so a request is
never sent to a backend with no ready pod.
"""

from __future__ import annotations

from typing import Any

from modelplane_operator.kinds import HTTP_ROUTE
from modelplane_operator.models import ModelDeploymentSpec, Route
from modelplane_operator.names import CANARY, STABLE, Variant, variant_service_name
from modelplane_operator.render.objects import CanaryPlan, Manifest, Owner, metadata


def _backend(owner: Owner, spec: ModelDeploymentSpec, variant: Variant, weight: int) -> Any:
    return {
        "name": variant_service_name(owner.name, variant),
        "port": spec.service.port,
        "weight": weight,
    }


def _parent_refs(route: Route) -> list[dict[str, Any]]:
    refs = []
    for parent in route.parent_refs:
        ref: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway"}
        ref["name"] = parent.name
        if parent.namespace is not None:
            ref["namespace"] = parent.namespace
        if parent.section_name is not None:
            ref["sectionName"] = parent.section_name
        refs.append(ref)
    return refs


def render_route(
    owner: Owner, spec: ModelDeploymentSpec, canary: CanaryPlan | None
) -> Manifest | None:
    """The HTTPRoute, when spec.route asks for one."""
    if spec.route is None:
        return None
    weight = 0 if canary is None else canary.weight
    backends = [_backend(owner, spec, STABLE, 100 - weight)]
    if canary is not None:
        backends.append(_backend(owner, spec, CANARY, weight))
    rules: list[dict[str, Any]] = []
    if canary is not None and canary.header is not None:
        match = {
            "headers": [{"type": "Exact", "name": canary.header.name, "value": canary.header.value}]
        }
        rules.append({"matches": [match], "backendRefs": [_backend(owner, spec, CANARY, 1)]})
    rules.append({"backendRefs": backends})
    route: dict[str, Any] = {"parentRefs": _parent_refs(spec.route), "rules": rules}
    if spec.route.hostnames:
        route["hostnames"] = list(spec.route.hostnames)
    return {
        "apiVersion": HTTP_ROUTE.api_version,
        "kind": HTTP_ROUTE.kind,
        "metadata": metadata(owner).to_dict(),
        "spec": route,
    }
