"""Tools in a chat: the messages and tools as the chat template sees them, and the model's tool
calls parsed back out of its text (whole, or as streaming deltas).

Calls travel in the text in the Hermes/Qwen convention, `<tool_call>{"name": ..., "arguments":
{...}}</tool_call>`. A template that renders `tools` itself gets them; for one that ignores them
(SmolLM2's) a system preamble describes the tools and the convention, and earlier calls and tool
results in the history are written as that text, so the model sees its own convention.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelplane_server.openai.protocol import (
    ChatMessage,
    FunctionDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallFunction,
    ToolDefinition,
)
from modelplane_server.openai.structured import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

_PREAMBLE = (
    "You may call functions to help with the user's request. The functions, as JSON schemas:\n"
    "<tools>\n%TOOLS%\n</tools>\n"
    "To call one, answer with its name and arguments as JSON inside tags:\n"
    f'{TOOL_CALL_OPEN}{{"name": <function name>, "arguments": <arguments object>}}{TOOL_CALL_CLOSE}'
)


def template_messages(
    messages: Sequence[ChatMessage], tools: Sequence[ToolDefinition], template_renders_tools: bool
) -> list[dict[str, Any]]:
    """The messages for `apply_chat_template`; with a template that ignores tools, the tools'
    preamble joins the system message (or becomes one) and calls and results become text."""
    rendered: list[dict[str, Any]] = []
    for message in messages:
        # `developer` is OpenAI's new name for `system`; chat templates only know the old one.
        role = "system" if message.role == "developer" else message.role
        entry: dict[str, Any] = {"role": role, "content": message.text()}
        if template_renders_tools:
            if message.tool_calls:
                entry["tool_calls"] = [_native_call(call) for call in message.tool_calls]
            if message.tool_call_id is not None:
                entry["tool_call_id"] = message.tool_call_id
        else:
            calls = "".join(_call_text(call) for call in message.tool_calls or ())
            if calls:
                entry["content"] = "\n".join(part for part in (entry["content"], calls) if part)
            if role == "tool":
                entry["content"] = f"<tool_response>\n{entry['content']}\n</tool_response>"
        rendered.append(entry)
    if tools and not template_renders_tools:
        described = "\n".join(
            json.dumps(tool.function.model_dump(exclude_none=True)) for tool in tools
        )
        preamble = _PREAMBLE.replace("%TOOLS%", described)
        if rendered and rendered[0]["role"] == "system":
            rendered[0]["content"] = f"{rendered[0]['content']}\n\n{preamble}"
        else:
            rendered.insert(0, {"role": "system", "content": preamble})
    return rendered


def template_tools(tools: Sequence[ToolDefinition]) -> list[dict[str, Any]]:
    return [tool.model_dump(exclude_none=True) for tool in tools]


def _arguments(call: ToolCall) -> Any:
    """A call's arguments as an object when its JSON string parses, else the string."""
    try:
        return json.loads(call.function.arguments)
    except ValueError:
        return call.function.arguments


def _native_call(call: ToolCall) -> dict[str, Any]:
    """A call for a template that renders tool calls itself: arguments as an object, as those
    templates expect (they `tojson` them; a JSON string would reach the model encoded twice)."""
    dumped = call.model_dump()
    dumped["function"]["arguments"] = _arguments(call)
    return dumped


def _call_text(call: ToolCall) -> str:
    body = json.dumps({"name": call.function.name, "arguments": _arguments(call)})
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_call(body: str, names: frozenset[str]) -> ToolCallFunction | None:
    """One call's JSON (between the tags) as a function call, or None if it is not one of
    `names` with an arguments object."""
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or call.get("name") not in names:
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if not isinstance(arguments, dict):
        return None
    return ToolCallFunction(name=call["name"], arguments=json.dumps(arguments))


@dataclass(frozen=True)
class ParsedOutput:
    content: str | None
    tool_calls: list[ToolCall]


def parse_output(text: str, names: frozenset[str]) -> ParsedOutput:
    """The text with its well-formed calls taken out; a malformed call stays in the content."""
    calls: list[ToolCall] = []
    kept: list[str] = []
    rest = text
    while (start := rest.find(TOOL_CALL_OPEN)) >= 0:
        end = rest.find(TOOL_CALL_CLOSE, start)
        if end < 0:
            break
        function = parse_call(rest[start + len(TOOL_CALL_OPEN) : end], names)
        if function is None:
            kept.append(rest[: end + len(TOOL_CALL_CLOSE)])
        else:
            kept.append(rest[:start])
            calls.append(ToolCall(id=new_call_id(), function=function))
        rest = rest[end + len(TOOL_CALL_CLOSE) :]
    kept.append(rest)
    content = "".join(kept)
    if calls:
        content = content.strip()
    return ParsedOutput(content or (None if calls else ""), calls)


class ToolCallStream:
    """Splits one choice's streamed text into content and tool-call deltas.

    Text that could be the start of `<tool_call>` is held back until it is known not to be; a call
    is sent once its closing tag arrives (its id and name, then its arguments), so what a client
    reassembles from the deltas equals the non-streaming `tool_calls`.
    """

    def __init__(self, names: frozenset[str]) -> None:
        self._names = names
        self._pending = ""
        self.calls = 0

    def feed(self, text: str, final: bool) -> tuple[str, list[ToolCallDelta]]:
        """(content to send now, call deltas to send now) after `text`; `final` flushes."""
        self._pending += text
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        while True:
            start = self._pending.find(TOOL_CALL_OPEN)
            if start < 0:
                break
            end = self._pending.find(TOOL_CALL_CLOSE, start)
            if end < 0:
                content.append(self._pending[:start])
                self._pending = self._pending[start:]
                return self._flush(content, final), deltas
            function = parse_call(self._pending[start + len(TOOL_CALL_OPEN) : end], self._names)
            if function is None:
                content.append(self._pending[: end + len(TOOL_CALL_CLOSE)])
            else:
                content.append(self._pending[:start])
                deltas += self._call_deltas(function)
            self._pending = self._pending[end + len(TOOL_CALL_CLOSE) :]
        # Hold back a tail that may still grow into the opening tag.
        held = _partial_tag_length(self._pending)
        if final:
            held = 0
        content.append(self._pending[: len(self._pending) - held])
        self._pending = self._pending[len(self._pending) - held :]
        return "".join(content), deltas

    def _flush(self, content: list[str], final: bool) -> str:
        if final:
            content.append(self._pending)
            self._pending = ""
        return "".join(content)

    def _call_deltas(self, function: ToolCallFunction) -> list[ToolCallDelta]:
        index, self.calls = self.calls, self.calls + 1
        return [
            ToolCallDelta(
                index=index,
                id=new_call_id(),
                type="function",
                function=FunctionDelta(name=function.name, arguments=""),
            ),
            ToolCallDelta(index=index, function=FunctionDelta(arguments=function.arguments)),
        ]


def _partial_tag_length(text: str) -> int:
    for length in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-length:]):
            return length
    return 0
