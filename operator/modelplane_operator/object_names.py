"""The apiserver's own rules for names (k8s.io/apimachinery `pkg/util/validation`), as field types.

A spec field that names a Kubernetes object, a label or a key accepts only what could name one, so
a typo is refused by `kubectl apply` with the field's path instead of failing later in a child
object the user never wrote. Each type carries its pattern and length for both sides: pydantic
(`modelplane-operator render`, the reconciler) and the CRD's OpenAPI schema. Map keys cannot carry
a pattern in a structural schema, so `keys_rule` gives the CEL rule that checks them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
# A label key or annotation key: an optional DNS-subdomain prefix and '/', then a name of at most
# 63 characters (alphanumerics, '-', '_', '.'; alphanumeric at both ends).
_QUALIFIED_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"

DNS_SUBDOMAIN_PATTERN = rf"^{_DNS_SUBDOMAIN}$"
DNS_LABEL_1123_PATTERN = rf"^{_DNS_LABEL}$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
QUALIFIED_NAME_PATTERN = rf"^({_DNS_SUBDOMAIN}/)?{_QUALIFIED_NAME}$"
CONFIG_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# 253 for the prefix, '/', 63 for the name.
QUALIFIED_NAME_MAX_LENGTH = 317

ObjectName = Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
"""The name of a Secret, ConfigMap, ServiceAccount, PriorityClass or claim (DNS-1123 subdomain)."""

NamespaceName = Annotated[str, Field(max_length=63, pattern=DNS_LABEL_1123_PATTERN)]
"""The name of a namespace (DNS-1123 label)."""

LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
"""A label value (also a node selector's value and a toleration's value)."""

QualifiedName = Annotated[
    str, Field(max_length=QUALIFIED_NAME_MAX_LENGTH, pattern=QUALIFIED_NAME_PATTERN)
]
"""A label key, annotation key, node selector key or taint key."""

ConfigKey = Annotated[str, Field(max_length=253, pattern=CONFIG_KEY_PATTERN)]
"""A key of a Secret or ConfigMap."""

QUALIFIED_NAME_RULE = (
    "a qualified name: an optional DNS subdomain prefix and '/', then at most 63 characters "
    "(alphanumerics, '-', '_' or '.', beginning and ending with an alphanumeric)"
)


def keys_rule(field: str) -> dict[str, Any]:
    """The CEL rule (for `json_schema_extra`) that every key of the map at `field` is a
    qualified name, with a message that names the field."""
    pattern = QUALIFIED_NAME_PATTERN.replace("\\", "\\\\")
    return {
        "x-kubernetes-validations": [
            {
                "rule": (
                    f"self.all(k, k.size() <= {QUALIFIED_NAME_MAX_LENGTH} && "
                    f"k.matches('{pattern}'))"
                ),
                "message": f"every key of {field} must be {QUALIFIED_NAME_RULE}",
            }
        ]
    }
