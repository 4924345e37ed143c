"""Every known-bad input gets an OpenAI-shaped 4xx naming the parameter, never a 5xx; an unexpected
exception gets an OpenAI-shaped 500."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import pytest

from modelplane_server.http.middleware import MAX_BODY_BYTES

from .fakes import FakeGenerationEngine
from .helpers import assert_openai_error, serve

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
USER = [{"role": "user", "content": "Hi"}]

# (route, JSON body, status, param); the fake's context is 256 tokens, one per character.
BAD_JSON_BODIES: list[tuple[str, Any, int, str | None]] = [
    (COMPLETIONS, {"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 10**30}, 400, "max_tokens"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 300}, 400, "max_tokens"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 2.5}, 400, "max_tokens"),
    (COMPLETIONS, {"prompt": "x" * 300}, 400, "prompt"),
    (COMPLETIONS, {"prompt": ""}, 400, "prompt"),
    (COMPLETIONS, {"prompt": []}, 400, "prompt"),
    (COMPLETIONS, {"prompt": ["a", "b"]}, 400, "prompt"),
    (COMPLETIONS, {"prompt": [[1, 2], [3]]}, 400, "prompt"),
    (COMPLETIONS, {"prompt": [[]]}, 400, "prompt"),
    (COMPLETIONS, {"prompt": 42}, 400, "prompt"),
    (COMPLETIONS, {"max_tokens": 3}, 400, "prompt"),
    (COMPLETIONS, {"prompt": "x", "model": "gpt-4"}, 404, "model"),
    (COMPLETIONS, {"prompt": "x", "model": "fake-embed"}, 404, "model"),
    (COMPLETIONS, {"prompt": "x", "model": 7}, 400, "model"),
    (COMPLETIONS, {"prompt": "x", "n": 17}, 400, "n"),
    (COMPLETIONS, {"prompt": "x", "best_of": 3}, 400, "best_of"),
    (COMPLETIONS, {"prompt": "x", "logprobs": 21}, 400, "logprobs"),
    (COMPLETIONS, {"prompt": [1, 2], "echo": True}, 400, "echo"),
    (COMPLETIONS, {"prompt": "x", "suffix": "end"}, 400, "suffix"),
    (COMPLETIONS, {"prompt": "x", "temperature": 3}, 400, "temperature"),
    (COMPLETIONS, {"prompt": "x", "top_p": 0}, 400, "top_p"),
    (COMPLETIONS, {"prompt": "x", "stream": "yes"}, 400, "stream"),
    (COMPLETIONS, {"prompt": "x", "stop": [""]}, 400, "stop"),
    (COMPLETIONS, {"prompt": "x", "stop": ["s"] * 17}, 400, "stop"),
    (COMPLETIONS, {"prompt": "x", "presence_penalty": 2.5}, 400, "presence_penalty"),
    (COMPLETIONS, {"prompt": "x", "frequency_penalty": -3}, 400, "frequency_penalty"),
    (COMPLETIONS, {"prompt": "x", "repetition_penalty": 0}, 400, "repetition_penalty"),
    (COMPLETIONS, {"prompt": "x", "logit_bias": {"a": 1}}, 400, "logit_bias"),
    (COMPLETIONS, {"prompt": "x", "logit_bias": {"5": 101}}, 400, "logit_bias.5"),
    (COMPLETIONS, {"prompt": "x", "min_tokens": -1}, 400, "min_tokens"),
    (COMPLETIONS, {"prompt": "x", "priority": "high"}, 400, "priority"),
    (COMPLETIONS, ["not", "an", "object"], 400, None),
    (CHAT, {"messages": []}, 400, "messages"),
    (CHAT, {"messages": USER, "max_completion_tokens": -5}, 400, "max_completion_tokens"),
    (CHAT, {"messages": USER, "max_completion_tokens": 300}, 400, "max_completion_tokens"),
    (CHAT, {"messages": USER, "max_tokens": 300}, 400, "max_tokens"),
    (CHAT, {"messages": [{"role": "user", "content": "x" * 300}]}, 400, "messages"),
    (CHAT, {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    (CHAT, {"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].tool_call_id"),
    (CHAT, {"messages": [{"role": "critic", "content": "x"}]}, 400, "messages[0].role"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    (
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        400,
        "messages[0].content",
    ),
    (CHAT, {"messages": USER, "n": 0}, 400, "n"),
    (CHAT, {"messages": USER, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    (CHAT, {"messages": USER, "top_logprobs": 2}, 400, "top_logprobs"),
    (CHAT, {"messages": USER, "tools": [{"type": "function"}]}, 400, "tools[0].function"),
    (CHAT, {"messages": USER, "tool_choice": "required"}, 400, "tool_choice"),
    (CHAT, {"messages": USER, "functions": [{"name": "f"}]}, 400, "functions"),
    (CHAT, {"messages": USER, "response_format": {"type": "yaml"}}, 400, "response_format.type"),
    (
        CHAT,
        {
            "messages": USER,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": {"type": "object", "x-guidance": None}},
            },
        },
        400,
        "response_format.json_schema.schema",
    ),
    (
        CHAT,
        {
            "messages": USER,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": {"enum": ["x" * 1024] * 65}},
            },
        },
        400,
        "response_format.json_schema.schema",
    ),
    (
        CHAT,
        {
            "messages": USER,
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"x-guidance": 1}}}
            ],
            "tool_choice": "required",
        },
        400,
        "tools[0].function.parameters",
    ),
    (CHAT, {"messages": USER, "stream_options": {"include_usage": "yes"}}, 400, None),
    (EMBEDDINGS, {"input": ""}, 400, "input"),
    (EMBEDDINGS, {"input": []}, 400, "input"),
    (EMBEDDINGS, {"input": ["ok", ""]}, 400, "input[1]"),
    (EMBEDDINGS, {"input": [1, 2]}, 400, "input"),
    (EMBEDDINGS, {"input": [[1, 2]]}, 400, "input"),
    (EMBEDDINGS, {"input": ["x"] * 2049}, 400, "input"),
    (EMBEDDINGS, {"input": "x", "model": "fake-llm"}, 404, "model"),
    (EMBEDDINGS, {"input": "x", "dimensions": 3}, 400, "dimensions"),
    (EMBEDDINGS, {"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ("/v1/similarity", {"texts": []}, 400, "texts"),
    ("/v1/similarity", {"texts": ["a", ""]}, 400, "texts[1]"),
    ("/v1/similarity", {"texts": ["a"], "unknown": 1}, 400, "unknown"),
    ("/v1/similarity", {"texts": ["a"], "queries": []}, 400, "queries"),
]


@pytest.mark.parametrize(
    ("route", "body", "status", "param"),
    BAD_JSON_BODIES,
    ids=[f"{route.rsplit('/', 1)[-1]}-{i}" for i, (route, *_) in enumerate(BAD_JSON_BODIES)],
)
async def test_bad_json_bodies_get_openai_shaped_4xx(
    route: str, body: Any, status: int, param: str | None
) -> None:
    async with serve() as served:
        response = await served.client.post(route, json=body)
        assert_openai_error(response, status, param)
        # The engine never saw it, and the server still serves.
        assert served.generation.submitted == []
        ok = await served.client.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 1})
        assert ok.status_code == 200


async def test_the_context_limit_is_named() -> None:
    async with serve() as served:
        response = await served.client.post(
            COMPLETIONS, json={"prompt": "x" * 250, "max_tokens": 9}
        )
    error = assert_openai_error(response, 400, "max_tokens")
    assert error["code"] == "context_length_exceeded"
    assert "256" in error["message"]
    assert "at most 6" in error["message"]


RAW_BODIES: list[tuple[bytes, str]] = [
    (b'{"prompt": "x", ', "application/json"),  # truncated JSON
    (b"\xff\xfe\x00garbage", "application/json"),  # not UTF-8
    (b'{"prompt": "\xc3\x28"}', "application/json"),  # invalid UTF-8 inside a string
    (b"", "application/json"),
    (b"prompt=x", "application/x-www-form-urlencoded"),
    (b"null", "application/json"),
    (b'{"prompt": "x", "max_tokens": NaN}', "application/json"),
]


@pytest.mark.parametrize(("raw", "content_type"), RAW_BODIES)
@pytest.mark.parametrize("route", [COMPLETIONS, CHAT, EMBEDDINGS])
async def test_malformed_bodies_get_a_400(route: str, raw: bytes, content_type: str) -> None:
    async with serve() as served:
        response = await served.client.post(
            route, content=raw, headers={"content-type": content_type}
        )
    assert_openai_error(response, 400)


async def test_unknown_routes_and_methods_use_the_error_shape_too() -> None:
    async with serve() as served:
        missing = await served.client.get("/v2/nothing")
        wrong_method = await served.client.get(COMPLETIONS)
    assert_openai_error(missing, 404)
    assert_openai_error(wrong_method, 405)


async def test_unknown_fields_are_ignored() -> None:
    async with serve() as served:
        response = await served.client.post(
            COMPLETIONS, json={"prompt": "x", "max_tokens": 1, "metadata": {"a": 1}}
        )
    assert response.status_code == 200


class ExplodingEngine(FakeGenerationEngine):
    def encode(self, text: str) -> list[int]:
        raise RuntimeError("tokenizer bug")


async def test_an_unexpected_exception_is_an_openai_shaped_500() -> None:
    async with serve(generation=ExplodingEngine()) as served:
        response = await served.client.post(COMPLETIONS, json={"prompt": "x"})
        health = await served.client.get("/health/live")
        metrics = await served.client.get("/metrics")
    error = assert_openai_error(response, 500)
    assert error["type"] == "server_error"
    assert "tokenizer bug" not in error["message"]  # no internals leak
    assert health.status_code == 200
    assert (
        'modelplane_http_requests_total{method="POST",route="/v1/completions",status="500"} 1.0'
        in metrics.text
    )


async def test_known_bad_inputs_never_reach_the_500_handler() -> None:
    """Replays every bad input above and checks the HTTP metrics saw no 5xx at all."""
    async with serve() as served:
        for route, body, _, _ in BAD_JSON_BODIES:
            await served.client.post(route, json=body)
        for raw, content_type in RAW_BODIES:
            await served.client.post(CHAT, content=raw, headers={"content-type": content_type})
        text = (await served.client.get("/metrics")).text
    statuses = {
        line.split('status="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("modelplane_http_requests_total{")
    }
    assert statuses
    assert all(status.startswith("4") for status in statuses), statuses


async def test_a_client_error_is_not_logged_as_a_server_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serve() as served:
        response = await served.client.post(COMPLETIONS, json={"prompt": 1})
    assert response.status_code == 400
    assert not [r for r in caplog.records if r.levelname in {"ERROR", "CRITICAL"}]


class TemplateError(Exception):
    """Stands in for jinja2's error, raised by a chat template's `raise_exception`."""


TemplateError.__module__ = "jinja2.exceptions"


class AlternatingTemplateEngine(FakeGenerationEngine):
    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], tools: object = None
    ) -> list[int]:
        raise TemplateError("Conversation roles must alternate user/assistant/user/assistant")


async def test_a_chat_template_refusal_is_a_400_on_messages() -> None:
    async with serve(generation=AlternatingTemplateEngine()) as served:
        response = await served.client.post(
            CHAT, json={"messages": [{"role": "assistant", "content": "x"}]}
        )
    error = assert_openai_error(response, 400, "messages")
    assert "roles must alternate" in error["message"]


async def test_an_oversized_body_is_a_413_declared_or_streamed() -> None:
    too_big = b'{"prompt": "' + b"x" * MAX_BODY_BYTES + b'"}'

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(too_big), 1 << 20):
            yield too_big[start : start + (1 << 20)]

    async with serve() as served:
        declared = await served.client.post(COMPLETIONS, content=too_big)
        streamed = await served.client.post(COMPLETIONS, content=chunked())
        assert served.generation.submitted == []
    for response in (declared, streamed):
        error = assert_openai_error(response, 413)
        assert str(MAX_BODY_BYTES) in error["message"]


async def test_a_long_prompt_is_tokenized_off_the_event_loop() -> None:
    class LoopCheckingEngine(FakeGenerationEngine):
        threads: ClassVar[list[str]] = []

        def encode(self, text: str) -> list[int]:
            self.threads.append(threading.current_thread().name)
            return super().encode(text)

    async with serve(generation=LoopCheckingEngine(context_length=100_000)) as served:
        short = await served.client.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 1})
        long = await served.client.post(COMPLETIONS, json={"prompt": "x" * 20_000, "max_tokens": 1})
    assert short.status_code == 200
    assert long.status_code == 200
    main_thread = threading.main_thread().name
    assert LoopCheckingEngine.threads[0] == main_thread
    assert LoopCheckingEngine.threads[1] != main_thread
