"""Names, labels and selectors the operator gives its children, written once.

Everything that identifies what belongs to a ModelDeployment lives here, below rendering,
reconciling and the API access alike (which all need it): the field manager, the recommended
`app.kubernetes.io/*` labels, the variant label and the names of each variant's children, the
selectors (one per purpose), and the GPU resource and node label names.

Selectors, by purpose:
- `instance_labels`: every pod of the ModelDeployment, stable and canary alike: the shared Service,
  the disruption budget, the NetworkPolicy, spreading, the pods the operator reads, the scale
  subresource's selector.
- `variant_labels`: the pods of one variant: its Deployment's selector (fixed for the life of the
  Deployment, so the stable Deployment never adopts a canary pod) and its own Service, which an
  HTTPRoute weighs.
"""

from __future__ import annotations

from typing import Literal

FIELD_MANAGER = "modelplane-operator"
APP_NAME = "modelplane-server"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
VARIANT_LABEL = "modelplane.io/variant"
Variant = Literal["stable", "canary"]
STABLE: Variant = "stable"
CANARY: Variant = "canary"
# The longest child name suffix ("-canary"): a ModelDeployment with a canary or a route has a name
# at most this much shorter than a DNS label.
VARIANT_SUFFIX_LENGTH = len("-canary")


def instance_labels(name: str) -> dict[str, str]:
    """The labels of every pod of the ModelDeployment, whichever its variant."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: name}


def variant_labels(name: str, variant: Variant) -> dict[str, str]:
    """The labels of one variant's pods: its Deployment's selector, fixed for the Deployment's
    life."""
    return {**instance_labels(name), VARIANT_LABEL: variant}


def deployment_name(name: str, variant: Variant) -> str:
    """The stable Deployment keeps the ModelDeployment's name; the canary's is `<name>-canary`."""
    return name if variant == STABLE else f"{name}-{variant}"


def variant_service_name(name: str, variant: Variant) -> str:
    """The Service of one variant, which an HTTPRoute weighs: `<name>-stable`, `<name>-canary`."""
    return f"{name}-{variant}"


def child_labels(name: str) -> dict[str, str]:
    """Labels on every child and every pod."""
    return {
        **instance_labels(name),
        LABEL_COMPONENT: "inference-server",
        LABEL_PART_OF: "modelplane",
        LABEL_MANAGED_BY: FIELD_MANAGER,
    }


CACHE_APP_NAME = "modelplane-model-cache"


def cache_labels(name: str) -> dict[str, str]:
    """Labels on a ModelCache's claim, Job and download pods (never selected as a server's)."""
    return {
        LABEL_NAME: CACHE_APP_NAME,
        LABEL_INSTANCE: name,
        LABEL_COMPONENT: "model-cache",
        LABEL_PART_OF: "modelplane",
        LABEL_MANAGED_BY: FIELD_MANAGER,
    }


def instance_selector(name: str) -> str:
    """Every pod of the ModelDeployment, as the scale subresource's status.selector wants it."""
    return ",".join(f"{key}={value}" for key, value in sorted(instance_labels(name).items()))
