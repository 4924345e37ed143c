"""Tool calls in the text (`openai.tools`): the prompt's messages, and calls parsed back whole and
as streaming deltas, which must reassemble to the same calls."""

from __future__ import annotations

import json

import pytest

from modelplane_server.openai.protocol import ChatMessage, ToolDefinition
from modelplane_server.openai.tools import ToolCallStream, parse_output, template_messages

NAMES = frozenset({"get_weather"})
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
WEATHER = ToolDefinition.model_validate(
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
)


def test_calls_are_taken_out_of_the_text_and_the_rest_is_content() -> None:
    parsed = parse_output(f"Let me check.\n{CALL}", NAMES)
    assert parsed.content == "Let me check."
    [call] = parsed.tool_calls
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert parse_output(CALL + CALL, NAMES).content is None


@pytest.mark.parametrize(
    "text",
    [
        "no call at all",
        '<tool_call>{"name": "unknown", "arguments": {}}</tool_call>',
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "get_weather", "arguments": {"city"',  # cut by max_tokens
    ],
)
def test_what_is_not_a_well_formed_known_call_stays_content(text: str) -> None:
    parsed = parse_output(text, NAMES)
    assert parsed.tool_calls == []
    assert parsed.content == text


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_streamed_deltas_reassemble_to_the_same_content_and_calls(piece: int) -> None:
    text = f"Sure <tool_ca{'ll'} thing. {CALL} done"
    stream = ToolCallStream(NAMES)
    content: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    pieces = [text[i : i + piece] for i in range(0, len(text), piece)]
    for number, part in enumerate(pieces):
        sent, deltas = stream.feed(part, final=number == len(pieces) - 1)
        content.append(sent)
        for delta in deltas:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
            assert "<tool_call>" not in "".join(content)
    whole = parse_output(text, NAMES)
    assert "".join(content) == text.replace(CALL, "")
    assert [call["name"] for call in calls.values()] == ["get_weather"]
    assert calls[0]["arguments"] == whole.tool_calls[0].function.arguments
    assert calls[0]["id"].startswith("call_")
    assert stream.calls == 1


def test_a_template_without_tools_gets_a_preamble_and_calls_as_text() -> None:
    messages = [
        ChatMessage.model_validate(message)
        for message in [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
        ]
    ]
    rendered = template_messages(messages, [WEATHER], template_renders_tools=False)
    assert rendered[0]["role"] == "system"
    assert rendered[0]["content"].startswith("Be brief.")
    assert '"name": "get_weather"' in rendered[0]["content"]
    assert rendered[2]["content"] == CALL
    assert rendered[3] == {"role": "tool", "content": "<tool_response>\n21 C\n</tool_response>"}
    native = template_messages(messages, [WEATHER], template_renders_tools=True)
    assert native[2]["tool_calls"][0]["function"]["name"] == "get_weather"
    # An object, as templates that render calls expect (they tojson it; a string would be
    # encoded twice).
    assert native[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert native[3]["tool_call_id"] == "call_1"
    assert native[0] == {"role": "system", "content": "Be brief."}
