"""The API reference (docs/api.md), generated from the CRD that `crd.py` generates from the models.

One row per field: its path, type, default, constraints and description, as `kubectl explain` and
the apiserver see them, plus every CEL rule with the message a user gets. `hack/update-api-docs.sh`
writes it, `hack/verify-api-docs.sh` fails when it is stale. The layout is the Jinja template
`templates/api.md.j2`; this module only walks the schema (pure: schema in, rows out).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from modelplane_operator import crd, model_cache_crd
from modelplane_operator.models import API_VERSION, KIND

Schema = dict[str, Any]
TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Rule:
    rule: str
    message: str


@dataclass(frozen=True)
class Row:
    path: str
    type: str
    required: bool
    default: str
    constraints: str
    description: str
    rules: tuple[Rule, ...] = field(default=())


def _type(schema: Schema) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(schema.get("type", "object"))
    if kind == "array":
        return f"[]{_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map[string]{_type(schema['additionalProperties'])}"
    return kind


def _constraints(schema: Schema) -> str:
    parts = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{value}`" for value in schema["enum"]))
    for key, word in (("minimum", ">="), ("maximum", "<=")):
        if key in schema:
            exclusive = schema.get(f"exclusive{key[:1].upper()}{key[1:]}") is True
            parts.append(f"{word.rstrip('=') if exclusive else word} {schema[key]}")
    for key, word in (
        ("maxLength", "at most {} characters"),
        ("maxItems", "at most {} items"),
        ("maxProperties", "at most {} entries"),
    ):
        if key in schema:
            parts.append(word.format(schema[key]))
    if "pattern" in schema:
        parts.append(f"matches `{schema['pattern']}`")
    return "; ".join(parts)


def _rules(schema: Schema) -> tuple[Rule, ...]:
    return tuple(
        Rule(item["rule"], item.get("message", ""))
        for item in schema.get("x-kubernetes-validations", [])
    )


def rows(schema: Schema, path: str, required: bool = False) -> list[Row]:
    """The field at `path` and every field below it, depth first in the schema's order."""
    default = schema.get("default")
    found = [
        Row(
            path=path,
            type=_type(schema),
            required=required,
            default="" if default is None else json.dumps(default, separators=(", ", ": ")),
            constraints=_constraints(schema),
            description=" ".join(str(schema.get("description", "")).split()),
            rules=_rules(schema),
        )
    ]
    children = schema.get("properties", {})
    needed = set(schema.get("required", []))
    for name, child in children.items():
        found += rows(child, f"{path}.{name}", name in needed)
    items = schema.get("items")
    if isinstance(items, dict) and items.get("properties"):
        for name, child in items["properties"].items():
            found += rows(child, f"{path}[].{name}", name in set(items.get("required", [])))
    return found


# Each CRD's reference: where its CRD comes from, its API module, its samples.
REFERENCES: dict[str, tuple[Callable[[], dict[str, Any]], str, tuple[str, ...]]] = {
    "ModelDeployment": (
        crd.custom_resource_definition,
        "operator/modelplane_operator/models.py",
        ("minimal", "full", "canary"),
    ),
    "ModelCache": (
        model_cache_crd.custom_resource_definition,
        "operator/modelplane_operator/model_cache_api.py",
        ("modelcache",),
    ),
}


def render(kind: str = KIND) -> str:
    """One CRD's reference, as docs/api.md (ModelDeployment) or docs/api-modelcache.md shows it."""
    build, source, samples = REFERENCES[kind]
    definition = build()
    (version,) = definition["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=False,  # Markdown, not HTML  # noqa: S701
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template("api.md.j2").render(
        api_version=API_VERSION,
        kind=definition["spec"]["names"]["kind"],
        source=source,
        samples=samples,
        names=definition["spec"]["names"],
        scope=definition["spec"]["scope"],
        object_rules=_rules(schema),
        spec=rows(schema["properties"]["spec"], "spec"),
        status=rows(schema["properties"]["status"], "status"),
        columns=version.get("additionalPrinterColumns", []),
    )


def main() -> None:
    """Print one reference: `python -m modelplane_operator.api_docs [ModelCache]`."""
    sys.stdout.write(render(sys.argv[1] if len(sys.argv) > 1 else KIND))


if __name__ == "__main__":
    main()
