"""Output constraints as grammars: `response_format` and forced tool calls become the llguidance
Lark text that `SamplingParams.grammar` carries to the model side (which compiles and checks it).

JSON is constrained to its compact form (no free whitespace between tokens): a small model offered
optional whitespace can emit newlines until `max_tokens`, and compact JSON parses the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# The Hermes/Qwen convention for a tool call in the text, which `tools.py` parses back.
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}
# A schema's largest JSON text: real ones are a few KiB; a bigger one would only cost the event loop
# (its check) and the step thread (each row's compile) time.
MAX_SCHEMA_BYTES = 65_536
_COMPACT = {"whitespace_flexible": False}


def checked_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A request's JSON schema as the grammar takes it; a `ValueError` says what is wrong."""
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"the schema is longer than {MAX_SCHEMA_BYTES} bytes of JSON")
    if not isinstance(schema.get("x-guidance", {}), dict):
        raise ValueError("x-guidance, if given, must be an object of llguidance options")
    return schema


def json_schema_grammar(schema: Mapping[str, Any]) -> str:
    """The whole output is one JSON value matching `schema`."""
    return f"start: {_json(schema)}"


def tool_call_grammar(functions: Sequence[tuple[str, Mapping[str, Any] | None]]) -> str:
    """The whole output is one call, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
    naming one of `functions` (name, parameters schema) with arguments that match its schema."""
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": name},
                "arguments": dict(parameters) if parameters else ANY_JSON_OBJECT,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, parameters in functions
    ]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return f"start: {json.dumps(TOOL_CALL_OPEN)} {_json(schema)} {json.dumps(TOOL_CALL_CLOSE)}"


def _json(schema: Mapping[str, Any]) -> str:
    """A `%json` rule; the compile options go in the schema's `x-guidance` (ours win)."""
    options = {**schema.get("x-guidance", {}), **_COMPACT}
    return "%json " + json.dumps({**schema, "x-guidance": options})
