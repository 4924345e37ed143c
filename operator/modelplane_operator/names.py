"""Names, labels and selectors the operator gives its children, written once.

Everything that identifies what belongs to a ModelDeployment lives here, below rendering,
reconciling and the API access alike (which all need it): the field manager, the recommended
`app.kubernetes.io/*` labels, the pod selector (fixed for the life of a Deployment), and the GPU
resource and node label names.
"""

from __future__ import annotations

FIELD_MANAGER = "modelplane-operator"
APP_NAME = "modelplane-server"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


def selector_labels(name: str) -> dict[str, str]:
    """The labels that select the pods; fixed for the life of the Deployment."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: name}


def child_labels(name: str) -> dict[str, str]:
    """Labels on every child and every pod."""
    return {
        **selector_labels(name),
        LABEL_COMPONENT: "inference-server",
        LABEL_PART_OF: "modelplane",
        LABEL_MANAGED_BY: FIELD_MANAGER,
    }


def selector_string(name: str) -> str:
    """The pod selector as the scale subresource's status.selector wants it."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(name).items()))
