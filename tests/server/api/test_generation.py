"""/v1/completions and /v1/chat/completions against the fake engine: bodies, SSE framing, usage,
and what reaches the engine (sampling parameters, priority, deadlines)."""

from __future__ import annotations

import statistics
import time

import pytest

from .fakes import WORDS
from .helpers import serve, sse_json


def expected_text(tokens: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(tokens))


async def test_completion_returns_text_usage_and_finish_reason() -> None:
    async with serve() as served:
        response = await served.client.post(
            "/v1/completions", json={"model": "fake-llm", "prompt": "Hello", "max_tokens": 4}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert response.headers["x-request-id"] == body["id"]
    assert body["model"] == "fake-llm"
    assert body["choices"] == [
        {"index": 0, "text": expected_text(4), "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


async def test_completion_defaults_to_the_one_model_and_16_tokens() -> None:
    async with serve() as served:
        response = await served.client.post("/v1/completions", json={"prompt": ["Hi"]})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 16
    assert served.generation.submitted[0].params.max_tokens == 16


async def test_completion_honours_stop_strings() -> None:
    async with serve() as served:
        response = await served.client.post(
            "/v1/completions", json={"prompt": "x", "max_tokens": 10, "stop": ["capital"]}
        )
    choice = response.json()["choices"][0]
    assert choice == {"index": 0, "text": "Paris is the", "logprobs": None, "finish_reason": "stop"}


async def test_sampling_parameters_priority_and_deadlines_reach_the_engine() -> None:
    async with serve(queue_timeout_s=7, request_timeout_s=70) as served:
        response = await served.client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "Hi"}],
                "max_completion_tokens": 3,
                "max_tokens": 99,
                "temperature": 0,
                "top_p": 0.5,
                "top_k": -1,
                "seed": 42,
                "stop": "never",
                "stop_token_ids": [7],
                "ignore_eos": True,
                "priority": -3,
                "user": "someone",
                "store": False,  # an OpenAI field we do not know: ignored
            },
        )
    assert response.status_code == 200, response.text
    [request] = served.generation.submitted
    params = request.params
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (3, 0.0, 0.5, 0)
    assert (params.seed, params.stop, params.stop_token_ids) == (42, ("never",), (7,))
    assert params.ignore_eos
    assert request.priority == -3
    assert request.queue_deadline is not None
    assert request.deadline is not None
    assert request.queue_deadline - request.arrival_time == pytest.approx(7)
    assert request.deadline - request.arrival_time == pytest.approx(70)


async def test_chat_applies_the_template_and_counts_its_tokens() -> None:
    parts = [{"type": "text", "text": "Capital"}, {"type": "text", "text": "of France?"}]
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": parts},
    ]
    async with serve() as served:
        response = await served.client.post(
            "/v1/chat/completions", json={"messages": messages, "max_tokens": 2}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    rendered = "<system>Be brief.<user>Capital\nof France?<assistant>"
    assert list(served.generation.submitted[0].prompt_token_ids) == [ord(c) for c in rendered]
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris is"},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": len(rendered),
        "completion_tokens": 2,
        "total_tokens": len(rendered) + 2,
    }


async def test_chat_without_max_tokens_may_use_the_rest_of_the_context() -> None:
    async with serve() as served:
        await served.client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]}
        )
    prompt = len(served.generation.submitted[0].prompt_token_ids)
    assert served.generation.submitted[0].params.max_tokens == 256 - prompt


async def test_streaming_chat_sends_role_content_finish_then_done() -> None:
    async with serve() as served:
        response = await served.client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_json(response.text)
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all("usage" not in chunk for chunk in chunks)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Paris"},
        {"content": " is"},
        {"content": " the"},
        {},
    ]
    assert finishes == [None, None, None, None, "length"]


async def test_streaming_chat_with_include_usage_ends_with_a_usage_chunk() -> None:
    async with serve() as served:
        response = await served.client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 2,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
    chunks = sse_json(response.text)
    *content, last = chunks
    assert all(chunk["usage"] is None and len(chunk["choices"]) == 1 for chunk in content)
    prompt = len("<user>Hi<assistant>")
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 2,
        "total_tokens": prompt + 2,
    }


async def test_streaming_completion_chunks() -> None:
    async with serve() as served:
        response = await served.client.post(
            "/v1/completions",
            json={
                "prompt": "Hi",
                "max_tokens": 2,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
    chunks = sse_json(response.text)
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert "".join(texts) == "Paris is"
    assert finishes[-1] == "length"
    assert set(finishes[:-1]) == {None}
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


async def test_n_choices_are_submitted_together_and_answered_by_index() -> None:
    async with serve() as served:
        response = await served.client.post(
            "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "n": 3, "seed": 5}
        )
        streamed = await served.client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "n": 2,
                  "stream": True},
        )  # fmt: skip
    body = response.json()
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    assert {choice["text"] for choice in body["choices"]} == {"Paris is"}
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}
    completions = served.generation.submitted[:3]
    assert [request.params.seed for request in completions] == [5, 6, 7]
    assert [request.request_id for request in completions] == [
        f"{body['id']}-{index}" for index in range(3)
    ]
    texts = ["", ""]
    for chunk in sse_json(streamed.text):
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts == ["Paris is", "Paris is"]


async def test_models_lists_both_models() -> None:
    async with serve() as served:
        response = await served.client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [(m["id"], m["kind"], m["max_model_len"]) for m in body["data"]] == [
        ("fake-llm", "generation", 256),
        ("fake-embed", "embedding", 128),
    ]
    assert all(m["object"] == "model" and m["owned_by"] == "modelplane" for m in body["data"])


async def test_served_model_name_overrides_the_engine_id() -> None:
    async with serve(served_model_name="team/llm") as served:
        ok = await served.client.post(
            "/v1/completions", json={"model": "team/llm", "prompt": "x", "max_tokens": 1}
        )
        models = await served.client.get("/v1/models")
    assert ok.status_code == 200
    assert ok.json()["model"] == "team/llm"
    assert models.json()["data"][0]["id"] == "team/llm"


async def test_stats_report_queue_running_batches_and_uptime() -> None:
    async with serve() as served:
        await served.client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
        response = await served.client.get("/stats")
    assert response.status_code == 200
    stats = response.json()
    assert stats["phase"] == "ready"
    assert stats["uptime_s"] >= 0
    assert stats["finished_requests"] == {"length": 1}
    generation = stats["generation"]
    assert generation["model"] == "fake-llm"
    assert (generation["waiting"], generation["running"]) == (0, 0)
    assert generation["steps_total"] == 3
    assert generation["max_batch_size"] == 4
    assert stats["embedding"]["dimensions"] == 8


async def test_the_http_layer_adds_little_per_request() -> None:
    """A coarse guard against accidental blocking on the request path (docs/server.md has the
    measured numbers: about 0.6 ms in-process on a busy 2-core machine)."""
    async with serve() as served:
        body = {"prompt": "Hello", "max_tokens": 1}
        for _ in range(10):
            await served.client.post("/v1/completions", json=body)
        latencies = []
        for _ in range(50):
            started = time.perf_counter()
            response = await served.client.post("/v1/completions", json=body)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
    assert statistics.median(latencies) < 0.025, statistics.median(latencies)
