"""Structured outputs and tools through the official `openai` client against the embedded SmolLM2
as a real process: `response_format` (json_object, strict json_schema) and forced tool calls come
out valid because decoding is constrained to them, greedy and sampled, streamed and not; a
constrained row does not change its unconstrained neighbours in the batch; and what cannot be
honoured is a 400 naming the field. The mask arithmetic is checked in
tests/server/engine/test_grammar.py, the tool-call parsing in tests/server/api/test_tools.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema_rs
import openai
import pytest

from .server_process import ServerProcess, running_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "person": PERSON,
    "colour": {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}},
        "required": ["colour"],
        "additionalProperties": False,
    },
    "cities": {
        "type": "object",
        "properties": {
            "cities": {
                "type": "array",
                "items": {"type": "string", "maxLength": 20},
                "minItems": 1,
                "maxItems": 3,
            }
        },
        "required": ["cities"],
        "additionalProperties": False,
    },
    "team": {
        "type": "object",
        "properties": {
            "lead": PERSON,
            "size": {"type": "integer", "minimum": 1, "maximum": 9},
            "remote": {"type": "boolean"},
        },
        "required": ["lead", "size", "remote"],
        "additionalProperties": False,
    },
}
PROMPTS = {
    "person": "Describe a fictional person.",
    "colour": "What colour is the sky?",
    "cities": "Name some cities in France.",
    "team": "Describe a small software team.",
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 30}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
PARAMETERS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in (WEATHER, TIME)}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris?"}]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("logs"),
        "--embedding-model=none",
        "--device=cpu",
        "--max-batch-size=8",
        startup_timeout_s=300,
    ) as server:
        yield server


@pytest.fixture
def client(smollm2: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=smollm2.url + "/v1", api_key="none", max_retries=0, timeout=120
    ) as client:
        yield client


def schema_format(name: str) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True},
    }


def chat(client: openai.OpenAI, content: str, **fields: Any) -> Any:
    return client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": content}],
        **{"temperature": 0, "max_tokens": 120, **fields},
    )


def assert_valid(text: str | None, schema: dict[str, Any]) -> Any:
    assert text is not None
    value = json.loads(text)
    errors = [error.message for error in jsonschema_rs.validator_for(schema).iter_errors(value)]
    assert not errors, (text, errors)
    return value


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_responses_match_their_schemas(
    client: openai.OpenAI, temperature: float
) -> None:
    def one(name: str) -> tuple[str, Any]:
        answer = chat(
            client,
            PROMPTS[name],
            response_format=schema_format(name),
            temperature=temperature,
            seed=7,
        )
        return name, answer.choices[0]

    with ThreadPoolExecutor(len(SCHEMAS)) as pool:
        for name, choice in pool.map(one, SCHEMAS):
            assert choice.finish_reason == "stop", (name, choice.message.content)
            assert_valid(choice.message.content, SCHEMAS[name])


def test_json_object_gives_a_json_object_in_chat_and_completions(client: openai.OpenAI) -> None:
    answer = chat(
        client,
        'Answer in JSON with the keys "city" and "country": where is the Eiffel Tower?',
        response_format={"type": "json_object"},
    )
    assert answer.choices[0].finish_reason == "stop", answer.choices[0].message.content
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    completion = client.completions.create(
        model="SmolLM2-135M-Instruct",
        prompt="A person as JSON:",
        max_tokens=120,
        temperature=0,
        extra_body={"response_format": schema_format("person")},
    )
    assert completion.choices[0].finish_reason == "stop"
    assert_valid(completion.choices[0].text, PERSON)


def test_a_constrained_neighbour_leaves_unconstrained_rows_unchanged(
    client: openai.OpenAI,
) -> None:
    free_prompts = ["Write a haiku about the sea.", "What is the capital of France?"]

    def free(prompt: str) -> str:
        return chat(client, prompt, max_tokens=40).choices[0].message.content or ""

    alone = [free(prompt) for prompt in free_prompts]
    with ThreadPoolExecutor(6) as pool:
        constrained = [
            pool.submit(chat, client, PROMPTS[name], response_format=schema_format(name))
            for name in SCHEMAS
        ]
        together = list(pool.map(free, free_prompts))
        for future, name in zip(constrained, SCHEMAS, strict=True):
            assert_valid(future.result().choices[0].message.content, SCHEMAS[name])
    assert together == alone


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_time"}}],
    ids=["required", "named"],
)
def test_a_forced_tool_call_parses_and_matches_its_schema(
    client: openai.OpenAI, tool_choice: Any
) -> None:
    answer = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=ASK_WEATHER,  # type: ignore[arg-type]
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice=tool_choice,
        temperature=0,
        max_tokens=120,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.id.startswith("call_")
    assert call.type == "function"
    if isinstance(tool_choice, dict):
        assert call.function.name == "get_time"
    assert_valid(call.function.arguments, PARAMETERS[call.function.name])


def test_a_streamed_tool_call_reassembles_to_a_valid_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=ASK_WEATHER,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        temperature=0,
        max_tokens=120,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["name"] == "get_weather"
    assert_valid(calls[0]["arguments"], PARAMETERS["get_weather"])


def test_tool_calls_and_results_in_the_history_are_accepted(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[
            *ASK_WEATHER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"city": "Paris", "unit": "celsius"}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
        ],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        temperature=0,
        max_tokens=30,
    )
    assert answer.choices[0].message.content
    assert answer.choices[0].message.tool_calls is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "no-such-type"}},
                }
            },
            "response_format",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "get_time"}},
            },
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
    ids=["bad-schema", "bad-type", "unknown-tool", "no-tools"],
)
def test_what_cannot_be_honoured_is_a_400_naming_the_field(
    client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, "Describe Paris.", extra_body=fields)
    assert raised.value.status_code == 400
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["param"] == param, body


def test_a_grammar_check_failure_comes_before_queueing(smollm2: ServerProcess) -> None:
    """An invalid schema never reaches the engine's queue: no request finishes for it."""
    before = smollm2.stats()
    with openai.OpenAI(base_url=smollm2.url + "/v1", api_key="none", max_retries=0) as client:
        bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}}
        with pytest.raises(openai.BadRequestError):
            chat(client, "Hi", response_format=bad)
    assert smollm2.stats()["finished_requests"] == before["finished_requests"]
