"""The Service in front of the ready pods, and the URL clients in the cluster use."""

from __future__ import annotations

from lightkube.models.core_v1 import (
    ServicePort,
    ServiceSpec,
)

from modelplane_operator import server_contract
from modelplane_operator.models import (
    ModelDeploymentSpec,
)
from modelplane_operator.names import (
    instance_labels,
)
from modelplane_operator.render.objects import (
    Manifest,
    Owner,
    manifest,
    metadata,
)


def service_url(owner: Owner, port: int) -> str:
    """In-cluster URL of the server's OpenAI-compatible API."""
    suffix = "" if port == 80 else f":{port}"
    return f"http://{owner.name}.{owner.namespace}.svc{suffix}{server_contract.OPENAI_BASE_PATH}"


def render_service(owner: Owner, spec: ModelDeploymentSpec) -> Manifest:
    """The Service in front of the ready pods."""
    service = ServiceSpec(
        type=spec.service.type,
        selector=instance_labels(owner.name),
        ports=[
            ServicePort(
                name=server_contract.PORT_NAME,
                port=spec.service.port,
                targetPort=server_contract.PORT_NAME,
                protocol="TCP",
            )
        ],
    )
    return manifest("v1", "Service", metadata(owner), service)
