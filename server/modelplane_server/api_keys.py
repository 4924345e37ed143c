"""The API key file's format, and where the HTTP side keeps a request's tenant.

One key per line, `#` starts a comment line, blank lines are skipped. After the key, optional
`name=value` fields give the key's tenant and the tenant's fair-share policy:

    sk-team-a-1  tenant=team-a share=3 max_queue=64 max_queue_tokens=65536
    sk-team-b    tenant=team-b share=1
    sk-legacy

A bare key (the format before tenants existed) belongs to tenant `default` with share 1. Several
keys may name one tenant; the policy fields may then be given on any of its lines, but lines that
both give a field must agree, and a key listed twice must name the same tenant both times.
`max_queue` and `max_queue_tokens` bound the tenant's own waiting requests and prompt tokens (0 or
absent: only the server's --max-queue limits apply).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelplane_server.engine.contract import DEFAULT_TENANT
from modelplane_server.engine.fair_share import TenantPolicy

# The key of the ASGI scope's "state" dict where the auth middleware puts the caller's tenant.
TENANT_STATE_KEY = "modelplane_tenant"
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # also a Prometheus label value
_POLICY_FIELDS = ("share", "max_queue", "max_queue_tokens")


@dataclass(frozen=True)
class ApiKey:
    key: str
    tenant: str = DEFAULT_TENANT


@dataclass(frozen=True)
class KeyFile:
    """The keys, and the policy of every tenant a key names (`default` always among them)."""

    keys: tuple[ApiKey, ...]
    tenants: Mapping[str, TenantPolicy]


def parse_key_file(lines: Iterable[str]) -> KeyFile:
    """Parse the key file's lines; a `ValueError` names the offending line."""
    keys: list[ApiKey] = []
    fields_by_tenant: dict[str, dict[str, tuple[int, int]]] = {DEFAULT_TENANT: {}}
    seen: dict[str, tuple[str, int]] = {}  # key -> (tenant, line)
    for number, line in enumerate(lines, start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        tenant, fields = _parse_fields(number, words[1:])
        known = fields_by_tenant.setdefault(tenant, {})
        for name, value in fields.items():
            earlier = known.setdefault(name, (value, number))
            if earlier[0] != value:
                raise ValueError(
                    f"line {number}: tenant '{tenant}' has {name}={value}, but line {earlier[1]} "
                    f"gave it {name}={earlier[0]}"
                )
        earlier_key = seen.setdefault(words[0], (tenant, number))
        if earlier_key[0] != tenant:
            # The key itself stays out of the message: it is a secret, and messages reach logs.
            raise ValueError(
                f"line {number}: this key is also on line {earlier_key[1]}, for tenant "
                f"'{earlier_key[0]}' there and '{tenant}' here; a key belongs to one tenant"
            )
        keys.append(ApiKey(words[0], tenant))
    tenants = {
        tenant: TenantPolicy(**{name: value for name, (value, _) in fields.items()})
        for tenant, fields in fields_by_tenant.items()
    }
    return KeyFile(tuple(keys), tenants)


def _parse_fields(number: int, words: list[str]) -> tuple[str, dict[str, int]]:
    tenant = DEFAULT_TENANT
    fields: dict[str, int] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if not equals:
            raise ValueError(f"line {number}: '{word}' is not name=value")
        if name == "tenant":
            if not _TENANT_NAME.match(value):
                raise ValueError(
                    f"line {number}: tenant '{value}' must be 1-63 letters, digits, '.', '_' or "
                    "'-', starting with a letter or digit"
                )
            tenant = value
        elif name in _POLICY_FIELDS:
            if not value.isdigit() or (name == "share" and int(value) < 1):
                least = 1 if name == "share" else 0
                raise ValueError(f"line {number}: {name} must be an integer >= {least}")
            fields[name] = int(value)
        else:
            known = ", ".join(("tenant", *_POLICY_FIELDS))
            raise ValueError(f"line {number}: unknown field '{name}' (known: {known})")
    return tenant, fields


def tenant_of(scope: Mapping[str, Any]) -> str:
    """The tenant the auth middleware found for this request; `default` without keys."""
    state = scope.get("state") or {}
    return str(state.get(TENANT_STATE_KEY, DEFAULT_TENANT))
