"""The PodDisruptionBudget."""

from __future__ import annotations

from lightkube.models.meta_v1 import LabelSelector
from lightkube.models.policy_v1 import PodDisruptionBudgetSpec

from modelplane_operator.models import ModelDeploymentSpec
from modelplane_operator.names import instance_labels
from modelplane_operator.render.deployment import max_replicas
from modelplane_operator.render.objects import Manifest, Owner, manifest, metadata


def render_disruption_budget(owner: Owner, spec: ModelDeploymentSpec) -> Manifest | None:
    """A PDB, when it is enabled and more than one replica can exist."""
    if not spec.pod_disruption_budget.enabled or max_replicas(spec) <= 1:
        return None
    pdb = PodDisruptionBudgetSpec(
        maxUnavailable=spec.pod_disruption_budget.max_unavailable,
        selector=LabelSelector(matchLabels=instance_labels(owner.name)),
    )
    return manifest("policy/v1", "PodDisruptionBudget", metadata(owner), pdb)
