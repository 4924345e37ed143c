"""The Services: the shared one in front of every ready pod (status.url), and one per variant
for an HTTPRoute to weigh."""

from __future__ import annotations

from lightkube.models.core_v1 import ServicePort, ServiceSpec

from modelplane_operator import server_contract
from modelplane_operator.models import ModelDeploymentSpec
from modelplane_operator.names import Variant, instance_labels, variant_labels, variant_service_name
from modelplane_operator.render.objects import Manifest, Owner, manifest, metadata


def service_url(owner: Owner, port: int) -> str:
    """In-cluster URL of the server's OpenAI-compatible API."""
    suffix = "" if port == 80 else f":{port}"
    return f"http://{owner.name}.{owner.namespace}.svc{suffix}{server_contract.OPENAI_BASE_PATH}"


def _spec(spec: ModelDeploymentSpec, selector: dict[str, str], service_type: str) -> ServiceSpec:
    return ServiceSpec(
        type=service_type,
        selector=selector,
        ports=[
            ServicePort(
                name=server_contract.PORT_NAME,
                port=spec.service.port,
                targetPort=server_contract.PORT_NAME,
                protocol="TCP",
            )
        ],
    )


def render_service(owner: Owner, spec: ModelDeploymentSpec) -> Manifest:
    """The shared Service, in front of the ready pods of both variants."""
    service = _spec(spec, instance_labels(owner.name), spec.service.type)
    return manifest("v1", "Service", metadata(owner), service)


def render_variant_service(owner: Owner, spec: ModelDeploymentSpec, variant: Variant) -> Manifest:
    """One variant's own Service (ClusterIP): an HTTPRoute's backend."""
    service = _spec(spec, variant_labels(owner.name, variant), "ClusterIP")
    name = variant_service_name(owner.name, variant)
    return manifest("v1", "Service", metadata(owner, name, variant), service)
