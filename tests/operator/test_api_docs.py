"""docs/api.md documents the whole API: every field and every rule's message, from the CRD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelplane_operator import api_docs, crd

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def schema() -> dict[str, Any]:
    (version,) = crd.custom_resource_definition()["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


def test_every_spec_field_has_its_heading_type_and_description() -> None:
    text = api_docs.render()
    rows = api_docs.rows(schema()["properties"]["spec"], "spec")
    assert len(rows) > 60
    for row in rows[1:]:
        assert f"`{row.path}`\n\n`{row.type}`" in text, row.path
        assert row.description, row.path
        assert row.description in text, row.path


def test_every_rule_message_is_documented() -> None:
    text = api_docs.render()
    messages = [rule.message for row in api_docs.rows(schema(), "") for rule in row.rules]
    assert any("extraArgs cannot set --model" in message for message in messages)
    for message in messages:
        assert message in text


def test_constraints_say_what_the_apiserver_enforces() -> None:
    (row,) = [
        r
        for r in api_docs.rows(schema()["properties"]["spec"], "spec")
        if r.path == "spec.autoscaling.targetBatchFillPercent"
    ]
    assert row.constraints == ">= 1; <= 100"
    assert "one of `Auto`, `HuggingFace`, `GGUF`" in api_docs.render()


def test_the_checked_in_reference_is_current() -> None:
    assert DOCS.read_text() == api_docs.render()


def test_the_model_cache_reference_documents_every_field_and_is_current() -> None:
    from modelplane_operator import model_cache_crd

    (version,) = model_cache_crd.custom_resource_definition()["spec"]["versions"]
    cache_schema = version["schema"]["openAPIV3Schema"]
    text = api_docs.render("ModelCache")
    for row in api_docs.rows(cache_schema["properties"]["spec"], "spec")[1:]:
        assert f"`{row.path}`" in text, row.path
        assert row.description, row.path
    docs = Path(__file__).resolve().parents[2] / "docs" / "api-modelcache.md"
    assert docs.read_text() == text
