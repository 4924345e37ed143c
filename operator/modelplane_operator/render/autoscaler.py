"""The autoscaler: an HPA or a KEDA ScaledObject, whichever the plan chooses."""

from __future__ import annotations

from dataclasses import dataclass

from modelplane_operator import autoscaling as autoscaling_plan
from modelplane_operator.autoscaling import Actuator, Windows
from modelplane_operator.kinds import SCALED_OBJECT
from modelplane_operator.models import ModelDeploymentSpec
from modelplane_operator.render.objects import Manifest, Owner, RenderOptions, manifest, metadata

PROMETHEUS_URL_MISSING = (
    "actuator KEDA needs the operator's Prometheus URL (chart value prometheus.url, "
    "MODELPLANE_OPERATOR_PROMETHEUS_URL) for its triggers; no ScaledObject was created"
)


@dataclass(frozen=True)
class AutoscalerPlan:
    """Which actuator owns the replicas and its timing; `problem` when it cannot be rendered."""

    actuator: Actuator
    windows: Windows
    problem: str | None = None


def render_autoscaler(
    owner: Owner, spec: ModelDeploymentSpec, options: RenderOptions
) -> tuple[Manifest | None, AutoscalerPlan | None]:
    """The HPA or KEDA ScaledObject, when autoscaling is requested and not suspended; with the
    plan (actuator and windows) for status."""
    autoscaling = spec.autoscaling
    if autoscaling is None or spec.suspend:
        return None, None
    keda_usable = SCALED_OBJECT.crd in options.installed_crds and bool(options.prometheus_url)
    actuator = autoscaling_plan.choose_actuator(autoscaling, keda_usable)
    timing = autoscaling_plan.windows(autoscaling, options.measured_startup_seconds)
    plan = AutoscalerPlan(actuator=actuator, windows=timing)
    if actuator == "HPA":
        hpa = autoscaling_plan.hpa_spec(owner.name, autoscaling, timing)
        return manifest("autoscaling/v2", "HorizontalPodAutoscaler", metadata(owner), hpa), plan
    if not options.prometheus_url:
        return None, AutoscalerPlan(actuator, timing, problem=PROMETHEUS_URL_MISSING)
    scaled = autoscaling_plan.scaled_object_spec(
        owner.name, owner.namespace, autoscaling, timing, options.prometheus_url
    )
    scaled_object = {
        "apiVersion": SCALED_OBJECT.api_version,
        "kind": SCALED_OBJECT.kind,
        "metadata": metadata(owner).to_dict(),
        "spec": scaled,
    }
    return scaled_object, plan
