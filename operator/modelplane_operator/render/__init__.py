"""Pure rendering: a ModelDeployment spec in, the child manifests (as dicts) out.

No I/O, no clock, no randomness: the same input always renders byte-identical output, which is what
makes golden files, `modelplane-operator render` (a GitOps preview) and write-free steady state
possible. Children are built with lightkube's typed models rather than dict literals so that a
misspelt field or a wrong type is a mypy error here instead of a silently pruned field in the
cluster; `to_dict()` then drops every unset field, so we send only the fields we mean to own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelplane_operator import server_contract
from modelplane_operator.kinds import ChildKind, kind_of
from modelplane_operator.models import ModelDeploymentSpec, ResolvedConfig, ResolvedGPU
from modelplane_operator.names import CANARY, STABLE
from modelplane_operator.render.autoscaler import AutoscalerPlan, render_autoscaler
from modelplane_operator.render.deployment import desired_replicas, render_deployment
from modelplane_operator.render.disruption_budget import render_disruption_budget
from modelplane_operator.render.model import model_size, place_model, startup_budget_seconds
from modelplane_operator.render.monitoring import render_prometheus_rule, render_service_monitor
from modelplane_operator.render.network_policy import render_network_policy
from modelplane_operator.render.objects import CanaryPlan, Manifest, Owner, RenderOptions
from modelplane_operator.render.route import render_route
from modelplane_operator.render.service import render_service, render_variant_service, service_url

__all__ = ["CanaryPlan", "Manifest", "Owner", "RenderOptions", "Rendered", "render", "service_url"]


@dataclass(frozen=True)
class Rendered:
    """What one ModelDeployment should look like in the cluster."""

    children: list[Manifest]
    resolved: ResolvedConfig
    # Kinds the spec asks for whose CRD is not installed.
    skipped: tuple[ChildKind, ...] = ()
    autoscaler: AutoscalerPlan | None = None
    notes: list[str] = field(default_factory=list)


def render(owner: Owner, spec: ModelDeploymentSpec, options: RenderOptions) -> Rendered:
    """Every child the ModelDeployment should have, plus the configuration they resolve to."""
    size_gib, size_source = model_size(spec.model)
    placement = place_model(spec.model, spec.image, spec.image_pull_policy, size_gib)
    budget = startup_budget_seconds(spec, size_gib)
    children: list[Manifest] = [
        render_deployment(
            owner,
            spec,
            placement,
            budget,
            replicas=options.stable_replicas,
            surge=options.surge,
        ),
        render_service(owner, spec),
    ]
    children += _variants(owner, spec, options.canary)
    autoscaler, plan = render_autoscaler(owner, spec, options)
    optional = (
        autoscaler,
        render_disruption_budget(owner, spec),
        render_network_policy(owner, spec),
        render_service_monitor(owner, spec) if spec.monitoring.service_monitor else None,
        render_prometheus_rule(owner, spec, options),
    )
    children += [child for child in optional if child is not None]
    children, skipped = _installed_only(children, options.installed_crds)
    autoscaler_range = None
    if spec.autoscaling is not None and not spec.suspend:
        autoscaler_range = f"{spec.autoscaling.min_replicas}-{spec.autoscaling.max_replicas}"
    resolved = ResolvedConfig(
        image=spec.image,
        gpu=ResolvedGPU(type=spec.accelerator.type, count=spec.accelerator.count),
        model_path=placement.model_path,
        model_size_gi_b=size_gib,
        model_size_source=size_source,
        startup_probe_budget_seconds=budget,
        termination_grace_period_seconds=server_contract.termination_grace_seconds(
            spec.server.drain_timeout_seconds
        ),
        desired_replicas=desired_replicas(spec),
        autoscaler=autoscaler_range,
        actuator=None if plan is None else plan.actuator,
        scale_up_period_seconds=None if plan is None else plan.windows.scale_up_period_seconds,
        scale_down_stabilization_seconds=(
            None if plan is None else plan.windows.scale_down_stabilization_seconds
        ),
        children=[f"{child['kind']}/{child['metadata']['name']}" for child in children],
    )
    return Rendered(children=children, resolved=resolved, skipped=skipped, autoscaler=plan)


def _variants(owner: Owner, spec: ModelDeploymentSpec, canary: CanaryPlan | None) -> list[Manifest]:
    """The canary's Deployment, each variant's Service and the HTTPRoute, as far as wanted."""
    children: list[Manifest] = []
    if canary is not None:
        canary_size, _ = model_size(canary.spec.model)
        canary_spec = canary.spec
        placement = place_model(
            canary_spec.model, canary_spec.image, canary_spec.image_pull_policy, canary_size
        )
        budget = startup_budget_seconds(canary_spec, canary_size)
        children.append(
            render_deployment(
                owner, canary_spec, placement, budget, variant=CANARY, replicas=canary.replicas
            )
        )
    if spec.route is not None or canary is not None:
        children.append(render_variant_service(owner, spec, STABLE))
    if canary is not None:
        children.append(render_variant_service(owner, spec, CANARY))
    route = render_route(owner, spec, canary)
    return children if route is None else [*children, route]


def _installed_only(
    children: list[Manifest], installed_crds: frozenset[str]
) -> tuple[list[Manifest], tuple[ChildKind, ...]]:
    """The children whose kind the cluster serves, and the kinds left out because their CRD is
    not installed: the one place an add-on's absence is handled."""
    kept, skipped = [], []
    for child in children:
        kind = kind_of(child)
        if kind.crd is None or kind.crd in installed_crds:
            kept.append(child)
        elif kind not in skipped:
            skipped.append(kind)
    return kept, tuple(skipped)
