"""Name types follow the apiserver's rules: what it accepts passes, what it refuses fails.

The cases are the edges of k8s.io/apimachinery's `IsDNS1123Subdomain`, `IsDNS1123Label`,
`IsValidLabelValue`, `IsQualifiedName` and `IsConfigMapKey`; the apiserver-side twin is
tests/crds/test_crd_validation.py on tests/operator/invalid_specs.yaml.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from modelplane_operator.object_names import (
    QUALIFIED_NAME_PATTERN,
    ConfigKey,
    LabelValue,
    NamespaceName,
    ObjectName,
    QualifiedName,
)

CASES: list[tuple[Any, list[str], list[str]]] = [
    (
        ObjectName,
        ["hf-token", "a", "0abc", "my.secret.v2", "a" * 253],
        ["", "HF_Token", "-a", "a-", "a..b", "keys/prod", "a" * 254],
    ),
    (
        NamespaceName,
        ["monitoring", "0team", "a" * 63],
        ["", "Team", "team.gateway", "team gateway", "a" * 64],
    ),
    (
        LabelValue,
        ["", "ml", "ML_team.v-2", "a" * 63],
        ["-ml", "ml-", "platform/ml", "ml team", "a" * 64],
    ),
    (
        QualifiedName,
        ["team", "example.com/team", "nvidia.com/gpu.product", "A_b.c", "a" * 63],
        ["", "example.com/", "/team", "-zone", "team name", "Example.com/team", "a" * 64],
    ),
    (ConfigKey, ["api-key", ".env", "KEY_1"], ["", "api key", "a/b"]),
]


@pytest.mark.parametrize(
    ("kind", "name", "valid"),
    [(kind, name, True) for kind, good, _ in CASES for name in good]
    + [(kind, name, False) for kind, _, bad in CASES for name in bad],
)
def test_a_name_is_valid_exactly_when_the_apiserver_would_take_it(
    kind: Any, name: str, valid: bool
) -> None:
    adapter: TypeAdapter[str] = TypeAdapter(kind)
    if valid:
        assert adapter.validate_python(name) == name
    else:
        with pytest.raises(ValidationError):
            adapter.validate_python(name)


def test_a_qualified_names_prefix_is_a_dns_subdomain_and_its_name_63_characters() -> None:
    assert re.match(QUALIFIED_NAME_PATTERN, "a." * 100 + "io/" + "n" * 63)
    assert not re.match(QUALIFIED_NAME_PATTERN, "example.com/" + "n" * 64)
    assert not re.match(QUALIFIED_NAME_PATTERN, "a/b/c")
