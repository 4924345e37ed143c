"""The pydantic models refuse what the CRD's schema and CEL rules refuse, naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelplane_operator.models import ModelDeploymentSpec

CASES = yaml.safe_load((Path(__file__).parent / "invalid_specs.yaml").read_text())
VALID_SPEC: dict[str, Any] = CASES["valid"]
INVALID_SPECS = [(case["id"], case["patch"], case["field"]) for case in CASES["invalid"]]


def spec_with(patch: dict[str, Any]) -> dict[str, Any]:
    return {**VALID_SPEC, **patch}


def test_minimal_spec_defaults() -> None:
    spec = ModelDeploymentSpec.model_validate(VALID_SPEC)
    assert spec.accelerator.count == 1
    assert spec.replicas is None
    assert spec.server.max_batch_size == 32
    assert spec.rollout.max_surge == 1
    assert spec.rollout.max_unavailable == 0
    assert spec.service.port == 80


@pytest.mark.parametrize(
    ("case", "patch", "field"), INVALID_SPECS, ids=[c[0] for c in INVALID_SPECS]
)
def test_invalid_specs_are_refused(case: str, patch: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        ModelDeploymentSpec.model_validate(spec_with(patch))
    # pydantic names the location as a path; the cross-field rules name it in the message.
    location_or_message = str(error.value)
    leaf = field.rsplit(".", 1)[-1].split(" ", maxsplit=1)[0]
    assert leaf in location_or_message, (case, location_or_message)


def test_names_the_apiserver_takes_are_taken() -> None:
    ModelDeploymentSpec.model_validate(spec_with(CASES["names_taken"]))


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        ModelDeploymentSpec.model_validate({**VALID_SPEC, "gpus": 2})


@pytest.mark.parametrize(
    "uri",
    ["hf://org/repo", "pvc://claim", "pvc://claim/a/b", "file:///models/x", "/models/x", "/"],
)
def test_model_uri_schemes(uri: str) -> None:
    assert ModelDeploymentSpec.model_validate({"model": {"uri": uri}}).model.uri == uri
