"""One request against an OpenAI-compatible endpoint, timed the way vLLM's `benchmark_serving.py`
times it (TTFT, the gaps between content chunks, end to end)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from modelplane_server.loadtest.workload import Prompt

Endpoint = Literal["completions", "chat", "embeddings"]
ENDPOINT_PATHS: dict[str, str] = {
    "completions": "/v1/completions",
    "chat": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
}


@dataclass(frozen=True)
class RequestResult:
    """What the client saw of one request; times are seconds, `sent` relative to the run's start."""

    sent: float
    e2e: float
    status: int | None  # the HTTP status; None when the request never got one
    error: str = ""  # "" when it succeeded; else a short reason
    ttft: float | None = None
    chunk_gaps: tuple[float, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.completion_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.completion_tokens - 1)


@dataclass(frozen=True)
class Target:
    base_url: str
    endpoint: Endpoint
    model: str
    stream: bool
    api_key: str = ""
    ignore_eos: bool = False
    temperature: float = 0.0
    timeout_s: float = 600.0
    # OpenAI ends a stream with `data: [DONE]`; transformers serve ends it after the chunk with
    # the finish reason instead. False accepts that as a complete stream.
    requires_done: bool = True


def request_body(target: Target, prompt: Prompt, max_tokens: int) -> dict[str, Any]:
    if target.endpoint == "embeddings":
        return {"model": target.model, "input": prompt.text}
    body: dict[str, Any] = {
        "model": target.model,
        "max_tokens": max_tokens,
        "temperature": target.temperature,
        "stream": target.stream,
    }
    if target.ignore_eos:
        body["ignore_eos"] = True
    if target.stream:
        body["stream_options"] = {"include_usage": True}
    if target.endpoint == "chat":
        body["messages"] = list(prompt.messages) or [{"role": "user", "content": prompt.text}]
    else:
        body["prompt"] = prompt.text
    return body


def _has_content(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


def _usage(payload: dict[str, Any]) -> tuple[int, int]:
    usage = payload.get("usage") or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    total = int(usage.get("total_tokens") or 0)
    completion = int(usage.get("completion_tokens") or max(0, total - prompt))
    return prompt, completion


class _Timing:
    """What one request has seen so far; turned into a `RequestResult` when it ends."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.sent = time.perf_counter()
        self.status: int | None = None
        self.ttft: float | None = None
        self.last_chunk: float | None = None
        self.gaps: list[float] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def chunk(self) -> None:
        now = time.perf_counter()
        if self.ttft is None:
            self.ttft = now - self.sent
        elif self.last_chunk is not None:
            self.gaps.append(now - self.last_chunk)
        self.last_chunk = now

    def result(self, error: str = "") -> RequestResult:
        return RequestResult(
            sent=self.sent - self.started,
            e2e=time.perf_counter() - self.sent,
            status=self.status,
            error=error,
            ttft=self.ttft,
            chunk_gaps=tuple(self.gaps),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )


async def _read_stream(response: httpx.Response, timing: _Timing, requires_done: bool) -> str:
    """Consume an SSE completion stream; returns "" or what went wrong."""
    finished = False
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return ""
        chunk = json.loads(data)
        if "error" in chunk:
            return "stream error"
        if _has_content(chunk):
            timing.chunk()
        if chunk.get("usage"):
            timing.prompt_tokens, timing.completion_tokens = _usage(chunk)
        finished |= any(choice.get("finish_reason") for choice in chunk.get("choices") or ())
    return "" if finished and not requires_done else "stream ended without [DONE]"


async def send_request(
    client: httpx.AsyncClient, target: Target, body: dict[str, Any], started: float
) -> RequestResult:
    """Send one request and time it; never raises (except cancellation)."""
    path = ENDPOINT_PATHS[target.endpoint]
    timing = _Timing(started)
    try:
        if body.get("stream"):
            async with client.stream("POST", path, json=body) as response:
                timing.status = response.status_code
                if response.status_code != 200:
                    await response.aread()
                    return timing.result(f"http {response.status_code}")
                return timing.result(await _read_stream(response, timing, target.requires_done))
        response = await client.post(path, json=body)
        timing.status = response.status_code
        if response.status_code == 200:
            timing.prompt_tokens, timing.completion_tokens = _usage(response.json())
        return timing.result("" if response.status_code == 200 else f"http {response.status_code}")
    except httpx.TimeoutException:
        return timing.result("timeout")
    except httpx.HTTPError as error:
        return timing.result(type(error).__name__)
    except (ValueError, KeyError) as error:  # a malformed body or chunk
        return timing.result(f"bad response: {type(error).__name__}")


async def first_model(base_url: str, headers: dict[str, str]) -> str:
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30.0) as client:
        response = await client.get("/v1/models")
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
