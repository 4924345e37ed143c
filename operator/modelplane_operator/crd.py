"""Generate the ModelDeployment CustomResourceDefinition from the pydantic models.

The CRD in `crds/` is this module's output, checked in and verified by `hack/verify-crds.sh`. The
pydantic JSON schema is rewritten into a Kubernetes *structural* schema: `$ref`s inlined, optional
fields simply not required (a null sent for them is pruned rather than stored), no
`additionalProperties: false` (pruning and strict field validation reject unknown fields instead),
int-or-string quantities, and `x-kubernetes-validations` CEL rules carried over from the models.

Run `python -m modelplane_operator.crd` (or `modelplane-operator crd`) to print it.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml

from modelplane_operator.models import (
    CANARY_NAME_MESSAGE,
    CATEGORIES,
    DNS_LABEL_PATTERN,
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    ApiModel,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)
from modelplane_operator.names import VARIANT_SUFFIX_LENGTH

Schema = dict[str, Any]

CRD_NAME = f"{PLURAL}.{GROUP}"
# Keys of pydantic's JSON schema that mean nothing to (or are refused by) the apiserver; map keys
# (`propertyNames`) are checked by CEL instead (`object_names.keys_rule`).
_DROPPED_KEYS = ("title", "additionalProperties", "$defs", "propertyNames")


def _inline(schema: Any, definitions: dict[str, Schema]) -> Any:
    """Replace every `$ref` with a copy of its definition; the field's own keys win."""
    if isinstance(schema, list):
        return [_inline(item, definitions) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = copy.deepcopy(definitions[schema["$ref"].rsplit("/", 1)[-1]])
        merged = {**target, **{key: value for key, value in schema.items() if key != "$ref"}}
        return _inline(merged, definitions)
    if "allOf" in schema and len(schema["allOf"]) == 1:
        merged = {**schema["allOf"][0], **{k: v for k, v in schema.items() if k != "allOf"}}
        return _inline(merged, definitions)
    return {key: _inline(value, definitions) for key, value in schema.items()}


def _without_null(schema: Schema) -> Schema:
    """`X | None` becomes plain X (optional = not required); int | str becomes int-or-string."""
    any_of = schema.get("anyOf")
    if any_of is None:
        return schema
    without_null = [option for option in any_of if option.get("type") != "null"]
    if schema.get("x-kubernetes-int-or-string"):
        return {**schema, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    if len(without_null) == 1:
        rest = {key: value for key, value in schema.items() if key != "anyOf"}
        return {**without_null[0], **rest}
    raise ValueError(f"unsupported union in schema: {any_of}")


def _structural(schema: Schema) -> Schema:
    """Rewrite one inlined pydantic schema node (and its children) into structural form."""
    schema = _without_null(dict(schema))
    if "patternProperties" in schema:
        # A map whose keys have a pattern: a structural schema has no place for it, so the values'
        # schema becomes `additionalProperties` and CEL checks the keys (`object_names.keys_rule`).
        (values,) = schema.pop("patternProperties").values()
        schema["additionalProperties"] = values
    if schema.get("default", 0) is None:
        del schema["default"]
    # JSON Schema's numeric exclusive bounds are OpenAPI v3's boolean flags on minimum/maximum.
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if exclusive in schema:
            schema[bound] = schema[exclusive]
            schema[exclusive] = True
    if schema.get("additionalProperties") is True or (
        schema.get("type") == "object"
        and "properties" not in schema
        and "additionalProperties" not in schema
    ):
        schema["x-kubernetes-preserve-unknown-fields"] = True
        schema.pop("additionalProperties", None)
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["type"] = "object"
    for key in _DROPPED_KEYS:
        if key == "additionalProperties" and isinstance(schema.get(key), dict):
            continue
        schema.pop(key, None)
    if "properties" in schema:
        schema["properties"] = {
            name: _structural(child) for name, child in schema["properties"].items()
        }
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _structural(schema["additionalProperties"])
    if "items" in schema:
        schema["items"] = _structural(schema["items"])
    if schema.get("type") == "number" and "format" not in schema:
        schema["format"] = "double"
    return _ordered(schema)


_FIRST = ("type", "description")
_LAST = ("required", "properties", "additionalProperties", "items")


def _ordered(schema: Schema) -> Schema:
    """Stable, readable key order: type and description first, children and CEL rules last."""

    def rank(key: str) -> tuple[int, str]:
        if key in _FIRST:
            return (0, str(_FIRST.index(key)))
        if key in _LAST:
            return (2, str(_LAST.index(key)))
        if key.startswith("x-kubernetes-validations"):
            return (3, key)
        return (1, key)

    return {key: schema[key] for key in sorted(schema, key=rank)}


def model_schema(model: type[ApiModel]) -> Schema:
    """A pydantic model's schema, inlined and structural."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.get("$defs", {})
    return _structural(_inline(raw, definitions))


def condition_list(status: Schema) -> None:
    """Conditions are a map keyed by type, so server-side apply merges them per type."""
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["items"]["properties"]["lastTransitionTime"]["format"] = "date-time"


def object_schema(kind: str, description: str, spec: Schema, status: Schema) -> Schema:
    """The top of one of our kinds' openAPIV3Schema: apiVersion, kind, metadata, spec, status."""
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"API version: {GROUP}/{VERSION}."},
            "kind": {"type": "string", "description": f"{kind}."},
            # The apiserver forbids anything but the type here (metadata is implicitly specified).
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def openapi_schema() -> Schema:
    """The v1alpha1 version's openAPIV3Schema."""
    spec = model_schema(ModelDeploymentSpec)
    status = model_schema(ModelDeploymentStatus)
    condition_list(status)
    described = (
        "A ModelDeployment serves one model behind an OpenAI-compatible API on a fleet of "
        "batching inference servers, with GPUs, probes, autoscaling and disruption budgets "
        "configured for model serving."
    )
    return {
        **object_schema(KIND, described, spec, status),
        "x-kubernetes-validations": [
            {
                "rule": (
                    f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && "
                    f"self.metadata.name.matches('{DNS_LABEL_PATTERN}')"
                ),
                "message": (
                    f"metadata.name must be a DNS-1035 label of at most {MAX_NAME_LENGTH} "
                    "characters: it also names the Service"
                ),
            },
            {
                "rule": (
                    "!has(self.spec) || !(has(self.spec.canary) || has(self.spec.route)) || "
                    f"self.metadata.name.size() <= {MAX_NAME_LENGTH - VARIANT_SUFFIX_LENGTH}"
                ),
                "message": CANARY_NAME_MESSAGE,
            },
        ],
    }


def _ready_condition(field: str) -> str:
    return f'.status.conditions[?(@.type=="Ready")].{field}'


def envelope(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: tuple[str, ...],
    schema: Schema,
    subresources: dict[str, Any],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    """A CustomResourceDefinition of this API group: one served and stored version."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "modelplane"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def custom_resource_definition() -> dict[str, Any]:
    """The whole CRD object."""
    scale = {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    return envelope(
        kind=KIND,
        plural=PLURAL,
        singular=SINGULAR,
        short_names=SHORT_NAMES,
        schema=openapi_schema(),
        subresources={"status": {}, "scale": scale},
        columns=[
            {
                "name": "Ready",
                "type": "string",
                "jsonPath": _ready_condition("status"),
                "description": "Whether the model serves at the desired scale.",
            },
            {
                "name": "Reason",
                "type": "string",
                "jsonPath": _ready_condition("reason"),
                "description": "Why it is (not) ready.",
            },
            {
                "name": "Replicas",
                "type": "string",
                "jsonPath": ".status.ready",
                "description": "Ready/desired replicas.",
            },
            {
                "name": "Model",
                "type": "string",
                "jsonPath": ".spec.model.uri",
                "description": "The model URI.",
            },
            {
                "name": "GPU",
                "type": "string",
                "jsonPath": ".status.gpu",
                "description": "GPUs per replica and their type.",
            },
            {
                "name": "Canary",
                "type": "string",
                "jsonPath": ".status.canary.summary",
                "description": "The canary's weight and step, or how it ended.",
            },
            {
                "name": "URL",
                "type": "string",
                "jsonPath": ".status.url",
                "priority": 1,
                "description": "In-cluster URL of the OpenAI-compatible API.",
            },
            {
                "name": "Age",
                "type": "date",
                "jsonPath": ".metadata.creationTimestamp",
            },
        ],
    )


def render_yaml() -> str:
    """The CRD as the YAML document checked in under crds/."""
    header = (
        "# Generated by hack/update-crds.sh from operator/modelplane_operator/models.py. "
        "Do not edit.\n"
    )
    return header + yaml.safe_dump(
        custom_resource_definition(), sort_keys=False, width=100, allow_unicode=True
    )


def main() -> None:
    """Print the CRD."""
    sys.stdout.write(render_yaml())


if __name__ == "__main__":
    main()
