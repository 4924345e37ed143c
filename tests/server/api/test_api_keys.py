"""The API key file's format: bare keys as before, tenants with shares and limits, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane_server.api_keys import ApiKey, parse_key_file, tenant_of
from modelplane_server.engine.fair_share import TenantPolicy


def test_bare_keys_belong_to_the_default_tenant_with_share_one() -> None:
    parsed = parse_key_file(["# comment", "", "  sk-one  ", "sk-two"])
    assert parsed.keys == (ApiKey("sk-one"), ApiKey("sk-two"))
    assert parsed.tenants == {"default": TenantPolicy()}


def test_keys_carry_tenants_whose_policy_their_lines_give() -> None:
    parsed = parse_key_file(
        [
            "sk-a1 tenant=team-a share=3 max_queue=64",
            "sk-a2 tenant=team-a max_queue_tokens=4096",
            "sk-b tenant=team-b",
        ]
    )
    assert [(key.key, key.tenant) for key in parsed.keys] == [
        ("sk-a1", "team-a"), ("sk-a2", "team-a"), ("sk-b", "team-b"),
    ]  # fmt: skip
    assert parsed.tenants["team-a"] == TenantPolicy(share=3, max_queue=64, max_queue_tokens=4096)
    assert parsed.tenants["team-b"] == TenantPolicy()
    assert "default" in parsed.tenants


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["k share=0"], "line 1: share must be an integer >= 1"),
        (["k max_queue=-1"], "line 1: max_queue must be an integer >= 0"),
        (["k colour=red"], "line 1: unknown field 'colour'"),
        (["k tenant"], "line 1: 'tenant' is not name=value"),
        (["k tenant=a b"], "line 1: 'b' is not name=value"),
        (["k tenant=bad/name"], "line 1: tenant 'bad/name' must be"),
        (
            ["k1 tenant=a share=2", "k2 tenant=a share=3"],
            "line 2: tenant 'a' has share=3, but line 1",
        ),
        (
            ["sk-x tenant=a", "sk-y", "sk-x tenant=b"],
            "line 3: this key is also on line 1, for tenant 'a' there and 'b' here",
        ),
    ],
)
def test_an_invalid_line_is_named(lines: list[str], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_key_file(lines)


def test_a_request_without_a_key_is_the_default_tenant() -> None:
    assert tenant_of({"type": "http"}) == "default"
    assert tenant_of({"state": {"modelplane_tenant": "team-a"}}) == "team-a"


def test_a_key_listed_twice_for_one_tenant_is_one_key_and_its_text_stays_out_of_errors() -> None:
    assert parse_key_file(["sk-x tenant=a", "sk-x tenant=a share=2"]).tenants["a"].share == 2
    with pytest.raises(ValueError, match="line 2") as raised:
        parse_key_file(["sk-secret-1", "sk-secret-1 tenant=a"])
    assert "sk-secret-1" not in str(raised.value)


def test_the_environments_key_cannot_also_be_another_tenants_file_key(tmp_path: Path) -> None:
    from modelplane_server.settings import ServerSettings

    key_file = tmp_path / "keys"
    key_file.write_text("sk-x tenant=a\n", encoding="utf-8")
    with pytest.raises(ValueError, match="MODELPLANE_API_KEY is also a key of --api-key-file"):
        ServerSettings(api_key="sk-x", api_key_file=key_file).api_keys()
    key_file.write_text("sk-x\n", encoding="utf-8")  # the same tenant: one key, no conflict
    assert {
        key.tenant for key in ServerSettings(api_key="sk-x", api_key_file=key_file).api_keys().keys
    } == {"default"}
