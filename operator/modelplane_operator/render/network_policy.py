"""The ingress NetworkPolicy."""

from __future__ import annotations

from lightkube.models.meta_v1 import LabelSelector
from lightkube.models.networking_v1 import (
    NetworkPolicyIngressRule,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicySpec,
)

from modelplane_operator import server_contract
from modelplane_operator.models import ModelDeploymentSpec
from modelplane_operator.names import instance_labels
from modelplane_operator.render.objects import Manifest, Owner, manifest, metadata


def render_network_policy(owner: Owner, spec: ModelDeploymentSpec) -> Manifest | None:
    """An ingress-only NetworkPolicy: this namespace plus the allowed ones may reach the server."""
    if not spec.network_policy.enabled:
        return None
    peers = [NetworkPolicyPeer(podSelector=LabelSelector())]
    peers += [
        NetworkPolicyPeer(
            namespaceSelector=LabelSelector(matchLabels={"kubernetes.io/metadata.name": namespace})
        )
        for namespace in spec.network_policy.allowed_namespaces
    ]
    policy = NetworkPolicySpec(
        podSelector=LabelSelector(matchLabels=instance_labels(owner.name)),
        policyTypes=["Ingress"],
        ingress=[
            NetworkPolicyIngressRule(
                from_=peers,
                ports=[NetworkPolicyPort(port=server_contract.PORT_NAME, protocol="TCP")],
            )
        ],
    )
    return manifest("networking.k8s.io/v1", "NetworkPolicy", metadata(owner), policy)
