"""`modelplane-server bench`: a load generator for any OpenAI-compatible endpoint (ours or another).

It imports no torch (only httpx and the standard library; matplotlib only for `--plot`), so it runs
anywhere the server's CLI installs. The metrics follow vLLM's `benchmark_serving.py`
(docs: /work/shared/notes/servers.md §4.2):

- TTFT: request sent -> first content chunk (streaming only; client side).
- TPOT: (E2E - TTFT) / (output tokens - 1), per request with more than one output token.
- ITL: every gap between content chunks, pooled over all requests.
- E2EL: request sent -> response complete.
- Throughput: completed requests, output tokens and (prompt + output) tokens per second of the run.
- Goodput: completed requests per second that met every given SLO.

Token counts come from the server's `usage` (when streaming, the request asks for it with
`stream_options.include_usage`), never from re-tokenising the text.

Load is either closed-loop at a fixed concurrency (N workers, each sends its next request when the
previous one ends) or open-loop Poisson arrivals at a rate, optionally capped by a concurrency
limit. A closed loop may ramp up: its N workers then start evenly over `ramp_up_s` instead of all
at t=0, so a run measures a steady state rather than one synchronised burst (the burst is what
`ramp_up_s=0` measures). Every run is bounded by a request count and a total time; requests still
in flight at the time limit are cancelled and counted as `unfinished`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import platform
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import httpx

Endpoint = Literal["completions", "chat", "embeddings"]
ENDPOINT_PATHS: dict[str, str] = {
    "completions": "/v1/completions",
    "chat": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
}
PERCENTILES = (50, 90, 99)

# The synthetic prompt set: seeded random words, so two runs (and two servers) see the same text.
_TEXT = (
    "the model server batches requests from many clients and streams tokens back while the "
    "operator keeps every deployment ready on its nodes a cluster of machines shares work in "
    "time and memory so each step should carry as many sequences as the budget allows latency "
    "throughput queue cache kernel tensor layer attention prompt answer question river mountain "
    "city garden music light window paper story planet ocean forest engine signal network"
)
_WORDS = tuple(_TEXT.split())


# --- workload ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaxTokens:
    """A distribution of `max_tokens`: fixed, uniform in [low, high], or capped exponential."""

    kind: Literal["fixed", "uniform", "exponential"]
    low: int
    high: int
    mean: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> MaxTokens:
        """`32` (fixed), `16:64` (uniform), `exp:32:128` (exponential, mean 32, capped at 128)."""
        try:
            if spec.startswith("exp:"):
                mean, cap = spec.removeprefix("exp:").split(":")
                return cls("exponential", 1, int(cap), float(mean))
            if ":" in spec:
                low, high = (int(part) for part in spec.split(":"))
                if low > high:
                    raise ValueError
                return cls("uniform", low, high)
            return cls("fixed", int(spec), int(spec))
        except ValueError:
            raise ValueError(f"bad max-tokens {spec!r}: use N, LOW:HIGH or exp:MEAN:CAP") from None

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return self.low
        if self.kind == "uniform":
            return rng.randint(self.low, self.high)
        return max(1, min(self.high, math.ceil(rng.expovariate(1.0 / self.mean))))


@dataclass(frozen=True)
class Prompt:
    """One request's input: a completion prompt or chat messages, and optionally its max_tokens."""

    text: str
    messages: tuple[dict[str, str], ...] = ()
    max_tokens: int | None = None


def synthetic_prompts(count: int, words: tuple[int, int], seed: int) -> list[Prompt]:
    """`count` prompts of seeded random words, each `words[0]..words[1]` words long."""
    rng = random.Random(seed)  # noqa: S311  # a seeded workload, not a secret
    return [
        Prompt(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(*words))))
        for _ in range(count)
    ]


def load_prompts(path: Path) -> list[Prompt]:
    """JSONL: one object per line with `prompt` (a string) or `messages` (chat), and optionally
    `max_tokens`; or one bare JSON string per line."""
    prompts: list[Prompt] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        item = json.loads(line)
        if isinstance(item, str):
            prompts.append(Prompt(item))
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
            prompts.append(Prompt(item["prompt"], max_tokens=item.get("max_tokens")))
        elif isinstance(item, dict) and isinstance(item.get("messages"), list):
            messages = tuple({str(k): str(v) for k, v in m.items()} for m in item["messages"])
            text = "\n".join(message.get("content", "") for message in messages)
            prompts.append(Prompt(text, messages, item.get("max_tokens")))
        else:
            raise ValueError(
                f"{path}:{number}: expected a string, or an object with prompt/messages"
            )
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


# --- one request --------------------------------------------------------------------------------


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


async def _read_stream(response: httpx.Response, timing: _Timing) -> str:
    """Consume an SSE completion stream; returns "" or what went wrong."""
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
    return "stream ended without [DONE]"


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
                return timing.result(await _read_stream(response, timing))
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


# --- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(values: Sequence[float], scale: float = 1000.0) -> dict[str, float] | None:
    """mean, std, p50/p90/p99 (in ms by default); None when there are no values."""
    if not values:
        return None
    summary = {
        "mean": statistics.fmean(values) * scale,
        "std": (statistics.pstdev(values) if len(values) > 1 else 0.0) * scale,
    }
    for q in PERCENTILES:
        summary[f"p{q}"] = percentile(values, q) * scale
    return summary


@dataclass(frozen=True)
class Slo:
    """Goodput SLOs in milliseconds; None means not constrained."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    @classmethod
    def parse(cls, specs: Iterable[str]) -> Slo:
        """`ttft:500 tpot:50 e2el:2000` (milliseconds), as in vLLM's `--goodput`."""
        values: dict[str, float] = {}
        for spec in specs:
            name, _, value = spec.partition(":")
            if name not in {"ttft", "tpot", "e2el"} or not value:
                raise ValueError(f"bad goodput SLO {spec!r}: use ttft:MS, tpot:MS or e2el:MS")
            values[f"{name}_ms"] = float(value)
        return cls(**values)

    @property
    def empty(self) -> bool:
        return self.ttft_ms is None and self.tpot_ms is None and self.e2el_ms is None

    def met(self, result: RequestResult) -> bool:
        def within(value: float | None, limit: float | None) -> bool:
            # A request without the metric (e.g. TPOT of a one-token answer) does not fail it.
            return limit is None or value is None or value * 1000.0 <= limit

        return (
            result.ok
            and within(result.ttft, self.ttft_ms)
            and within(result.tpot, self.tpot_ms)
            and within(result.e2e, self.e2el_ms)
        )


def summarize(
    results: Sequence[RequestResult], duration_s: float, slo: Slo, unfinished: int = 0
) -> dict[str, Any]:
    """The run's metrics (vLLM's definitions; latencies in ms) from its requests' results."""
    good = [result for result in results if result.ok]
    errors: Counter[str] = Counter(
        str(result.status) if result.status is not None else result.error
        for result in results
        if not result.ok
    )
    if unfinished:
        errors["unfinished"] += unfinished
    prompt_tokens = sum(result.prompt_tokens for result in good)
    output_tokens = sum(result.completion_tokens for result in good)
    duration = max(duration_s, 1e-9)
    summary: dict[str, Any] = {
        "duration_s": duration_s,
        "requests": len(results) + unfinished,
        "completed": len(good),
        "failed": len(results) - len(good) + unfinished,
        "errors": dict(sorted(errors.items())),
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "request_throughput": len(good) / duration,
        "output_throughput": output_tokens / duration,
        "total_token_throughput": (prompt_tokens + output_tokens) / duration,
        "ttft_ms": distribution([r.ttft for r in good if r.ttft is not None]),
        "tpot_ms": distribution([t for r in good if (t := r.tpot) is not None]),
        "itl_ms": distribution([gap for r in good for gap in r.chunk_gaps]),
        "e2el_ms": distribution([r.e2e for r in good]),
    }
    if not slo.empty:
        met = sum(1 for result in good if slo.met(result))
        summary["goodput"] = {
            "slo": dataclasses.asdict(slo),
            "requests_meeting_slo": met,
            "request_goodput": met / duration,
        }
    return summary


# --- a run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """How requests arrive: `concurrency` closed-loop workers, or Poisson at `rate` req/s (capped
    by `concurrency` when it is given). A closed loop's workers start evenly over `ramp_up_s`."""

    concurrency: int | None = None
    rate: float = math.inf
    ramp_up_s: float = 0.0

    def describe(self) -> str:
        parts = []
        if self.concurrency is not None:
            parts.append(f"concurrency {self.concurrency}")
        if math.isfinite(self.rate):
            parts.append(f"rate {self.rate:g}/s")
        if self.ramp_up_s > 0 and not math.isfinite(self.rate):
            parts.append(f"ramp-up {self.ramp_up_s:g}s")
        return ", ".join(parts) or "all at once"


class Progress:
    """A plain-text progress bar on stderr (rewritten in place on a terminal, a line every few
    seconds otherwise)."""

    def __init__(self, total: int, label: str, stream: TextIO | None, interval_s: float) -> None:
        self.total = total
        self.label = label
        self.stream = stream
        self.interval_s = interval_s
        self.done = 0
        self.failed = 0
        self.tokens = 0
        self._started = time.perf_counter()
        self._last = 0.0
        self._tty = bool(stream is not None and stream.isatty())

    def update(self, result: RequestResult) -> None:
        self.done += 1
        self.failed += not result.ok
        self.tokens += result.completion_tokens
        self.draw()

    def draw(self, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.perf_counter()
        if not final and now - self._last < (0.1 if self._tty else self.interval_s):
            return
        self._last = now
        elapsed = now - self._started
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        line = (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"err {self.failed}  {self.done / max(elapsed, 1e-9):.2f} req/s  "
            f"{self.tokens / max(elapsed, 1e-9):.1f} tok/s  {elapsed:.1f}s"
        )
        if self._tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


async def run_load(
    target: Target,
    prompts: Sequence[Prompt],
    max_tokens: MaxTokens,
    load: Load,
    *,
    num_requests: int,
    max_duration_s: float,
    seed: int = 0,
    slo: Slo | None = None,
    progress: TextIO | None = None,
    progress_interval_s: float = 5.0,
    client: httpx.AsyncClient | None = None,
) -> dict[str, Any]:
    """One bounded run at one load point; returns `summarize()`'s metrics plus the load."""
    rng = random.Random(seed)  # noqa: S311  # a seeded workload, not a secret
    bodies = [
        request_body(
            target,
            prompts[index % len(prompts)],
            prompts[index % len(prompts)].max_tokens or max_tokens.sample(rng),
        )
        for index in range(num_requests)
    ]
    arrivals = random.Random(seed + 1)  # noqa: S311  # seeded arrivals
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    limit = load.concurrency or num_requests
    own_client = client is None
    if client is None:
        client = httpx.AsyncClient(
            base_url=target.base_url,
            headers=headers,
            timeout=httpx.Timeout(target.timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        )
    bar = Progress(num_requests, load.describe(), progress, progress_interval_s)
    results: list[RequestResult] = []
    semaphore = asyncio.Semaphore(limit)
    started = time.perf_counter()
    deadline = started + max_duration_s

    async def one(body: dict[str, Any]) -> None:
        async with semaphore:
            if time.perf_counter() >= deadline:
                return
            result = await send_request(client, target, body, started)
        results.append(result)
        bar.update(result)

    tasks: list[asyncio.Task[None]] = []
    # A ramped closed loop releases its first `limit` requests evenly over the ramp; the rest
    # queue behind the semaphore as usual.
    ramp_step = load.ramp_up_s / limit if load.ramp_up_s > 0 and limit > 0 else 0.0
    try:
        for index, body in enumerate(bodies):
            if math.isfinite(load.rate):
                await asyncio.sleep(arrivals.expovariate(load.rate))
            elif ramp_step and 0 < index < limit:
                await asyncio.sleep(max(0.0, started + index * ramp_step - time.perf_counter()))
            if time.perf_counter() >= deadline:
                break
            tasks.append(asyncio.create_task(one(body)))
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        duration = time.perf_counter() - started
    finally:
        if own_client:
            await client.aclose()
    bar.draw(final=True)
    # Requests never sent (time ran out first) or cut off in flight count as unfinished.
    unfinished = num_requests - len(results)
    summary = summarize(results, duration, slo or Slo(), unfinished)
    return {
        "load": {
            "concurrency": load.concurrency,
            "rate": load.rate if math.isfinite(load.rate) else "inf",
            "ramp_up_s": load.ramp_up_s,
        },
        **summary,
    }


# --- the command line ---------------------------------------------------------------------------


def _numbers(text: str, kind: Callable[[str], float]) -> list[float]:
    return [kind(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelplane-server bench",
        description="Load-test an OpenAI-compatible endpoint and report vLLM-style metrics "
        "(TTFT, TPOT, ITL, E2E latency, throughput, goodput). A comma list in --concurrency or "
        "--request-rate runs a sweep, one bounded run per value.",
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root URL")
    parser.add_argument(
        "--endpoint", choices=sorted(ENDPOINT_PATHS), default="completions", help="API to drive"
    )
    parser.add_argument("--model", default="", help="model id (default: the first of /v1/models)")
    parser.add_argument(
        "--concurrency", default="", help="closed-loop concurrency, or a comma list to sweep"
    )
    parser.add_argument(
        "--request-rate",
        default="inf",
        help="Poisson arrival rate in req/s (inf = all at once), or a comma list to sweep; "
        "--concurrency (one value) then caps requests in flight",
    )
    parser.add_argument(
        "--ramp-up-s",
        type=float,
        default=0.0,
        help="closed loop: start the workers evenly over this many seconds (0 = all at once)",
    )
    parser.add_argument("--num-requests", type=int, default=64, help="requests per run")
    parser.add_argument("--max-duration-s", type=float, default=300.0, help="time cap per run")
    parser.add_argument("--dataset", type=Path, help="JSONL prompts (default: synthetic)")
    parser.add_argument(
        "--prompt-words", default="32:128", help="synthetic prompt length in words, LOW:HIGH"
    )
    parser.add_argument(
        "--max-tokens", default="32", help="N, LOW:HIGH (uniform) or exp:MEAN:CAP (capped exp.)"
    )
    parser.add_argument(
        "--ignore-eos", action="store_true", help="ask for exactly max_tokens (vLLM extension)"
    )
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument(
        "--no-stream", dest="stream", action="store_false", help="disable streaming (no TTFT)"
    )
    parser.add_argument("--goodput", nargs="*", default=[], help="SLOs: ttft:MS tpot:MS e2el:MS")
    parser.add_argument("--warmup", type=int, default=2, help="requests sent before measuring")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per-request timeout")
    parser.add_argument("--api-key", default="", help="Bearer key (or env OPENAI_API_KEY)")
    parser.add_argument("--label", default="", help="a name for this server in results and plots")
    parser.add_argument("--output", type=Path, help="write the JSON result here")
    parser.add_argument("--plot", type=Path, help="write a PNG of the sweep here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def sweep_loads(concurrency: str, request_rate: str) -> tuple[str, list[Load]]:
    """The runs a sweep makes, and which knob varies ("concurrency" or "rate")."""
    concurrencies: list[int | None] = [int(value) for value in _numbers(concurrency, float)]
    concurrencies = concurrencies or [None]
    rates = _numbers(request_rate, float) or [math.inf]
    if any(value is not None and value < 1 for value in concurrencies):
        raise ValueError("concurrency must be at least 1")
    if any(rate <= 0 for rate in rates):
        raise ValueError("request rates must be positive")
    if len(concurrencies) > 1 and len(rates) > 1:
        raise ValueError("sweep either --concurrency or --request-rate, not both")
    if len(rates) > 1:
        return "rate", [Load(concurrencies[0], rate) for rate in rates]
    return "concurrency", [Load(value, rates[0]) for value in concurrencies]


async def first_model(base_url: str, headers: dict[str, str]) -> str:
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30.0) as client:
        response = await client.get("/v1/models")
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])


async def bench(arguments: argparse.Namespace) -> dict[str, Any]:
    import os

    api_key = arguments.api_key or os.environ.get("OPENAI_API_KEY", "")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    model = arguments.model or await first_model(arguments.base_url, headers)
    target = Target(
        base_url=arguments.base_url,
        endpoint=arguments.endpoint,
        model=model,
        stream=arguments.stream and arguments.endpoint != "embeddings",
        api_key=api_key,
        ignore_eos=arguments.ignore_eos,
        temperature=arguments.temperature,
        timeout_s=arguments.timeout_s,
    )
    low, _, high = arguments.prompt_words.partition(":")
    if arguments.dataset is not None:
        prompts = load_prompts(arguments.dataset)
    else:
        prompts = synthetic_prompts(
            arguments.num_requests, (int(low), int(high or low)), arguments.seed
        )
    max_tokens = MaxTokens.parse(arguments.max_tokens)
    slo = Slo.parse(arguments.goodput)
    varied, loads = sweep_loads(arguments.concurrency, arguments.request_rate)
    loads = [dataclasses.replace(load, ramp_up_s=arguments.ramp_up_s) for load in loads]
    progress = None if arguments.quiet else sys.stderr
    if arguments.warmup:
        await run_load(
            target,
            prompts,
            MaxTokens("fixed", 4, 4),
            Load(1),
            num_requests=arguments.warmup,
            max_duration_s=arguments.max_duration_s,
            seed=arguments.seed + 99,
        )
    runs = [
        await run_load(
            target,
            prompts,
            max_tokens,
            load,
            num_requests=arguments.num_requests,
            max_duration_s=arguments.max_duration_s,
            seed=arguments.seed,
            slo=slo,
            progress=progress,
        )
        for load in loads
    ]
    return {
        "label": arguments.label or target.base_url,
        "target": {**dataclasses.asdict(target), "api_key": "***" if api_key else ""},
        "workload": {
            "dataset": str(arguments.dataset) if arguments.dataset else "synthetic",
            "prompt_words": arguments.prompt_words,
            "max_tokens": arguments.max_tokens,
            "num_requests": arguments.num_requests,
            "max_duration_s": arguments.max_duration_s,
            "seed": arguments.seed,
            "goodput_slo": arguments.goodput,
        },
        "varied": varied,
        "runs": runs,
        "client": {"python": platform.python_version(), "httpx": httpx.__version__},
    }


def _load_value(run: dict[str, Any], varied: str) -> float:
    value = run["load"][varied]
    return math.inf if value in (None, "inf") else float(value)


def plot_sweeps(
    results: Sequence[dict[str, Any]], path: Path, title: str = "", varied: str | None = None
) -> None:
    """One PNG: latency percentiles (left) and throughput (right) against the varied load, one
    line per result (server) so runs taken side by side read side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency_axes, throughput_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = ("-", "--", ":", "-.")
    for index, result in enumerate(results):
        knob = varied or result["varied"]
        runs = [run for run in result["runs"] if math.isfinite(_load_value(run, knob))]
        xs = [_load_value(run, knob) for run in runs]
        style = styles[index % len(styles)]
        label = result["label"]
        streaming = any(run["ttft_ms"] for run in runs)
        metric = "ttft_ms" if streaming else "e2el_ms"
        for quantile, marker in (("p50", "o"), ("p99", "^")):
            ys = [(run[metric] or {}).get(quantile, math.nan) for run in runs]
            latency_axes.plot(
                xs, ys, style, marker=marker, label=f"{label} {metric[:-3]} {quantile}"
            )
        if streaming:
            ys = [(run["tpot_ms"] or {}).get("mean", math.nan) for run in runs]
            latency_axes.plot(xs, ys, style, marker="s", label=f"{label} tpot mean")
        tokens = any(run["output_tokens"] for run in runs)
        ys = [run["output_throughput" if tokens else "request_throughput"] for run in runs]
        throughput_axes.plot(
            xs, ys, style, marker="o", label=f"{label} {'output tok/s' if tokens else 'req/s'}"
        )
    knob = varied or (results[0]["varied"] if results else "concurrency")
    for axes in (latency_axes, throughput_axes):
        axes.set_xlabel("concurrency" if knob == "concurrency" else "request rate (req/s)")
        axes.set_xscale("log", base=2)
        axes.grid(visible=True, alpha=0.3)
        axes.legend(fontsize=7)
    latency_axes.set_ylabel("latency (ms)")
    latency_axes.set_yscale("log")
    throughput_axes.set_ylabel("throughput")
    figure.suptitle(title or "modelplane-server bench")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def format_table(result: dict[str, Any]) -> str:
    """A short human summary of a sweep, one line per run."""
    lines = [
        f"{result['label']}  ({result['target']['endpoint']}, model {result['target']['model']})",
        f"{'load':<24}{'ok':>5}{'err':>5}{'req/s':>8}{'out tok/s':>11}"
        f"{'ttft p50':>10}{'ttft p99':>10}{'tpot':>8}{'e2e p50':>10}{'e2e p99':>10}",
    ]

    def ms(summary: dict[str, float] | None, key: str) -> str:
        return f"{summary[key]:.1f}" if summary else "-"

    for run in result["runs"]:
        load = Load(
            run["load"]["concurrency"],
            _load_value(run, "rate"),
            float(run["load"].get("ramp_up_s", 0.0)),
        )
        lines.append(
            f"{load.describe():<24}{run['completed']:>5}{run['failed']:>5}"
            f"{run['request_throughput']:>8.2f}{run['output_throughput']:>11.1f}"
            f"{ms(run['ttft_ms'], 'p50'):>10}{ms(run['ttft_ms'], 'p99'):>10}"
            f"{ms(run['tpot_ms'], 'mean'):>8}"
            f"{ms(run['e2el_ms'], 'p50'):>10}{ms(run['e2el_ms'], 'p99'):>10}"
        )
    return "\n".join(lines)


def bench_command(argv: Sequence[str]) -> int:
    parser = build_parser()
    arguments = parser.parse_args(list(argv))
    try:
        MaxTokens.parse(arguments.max_tokens)
        Slo.parse(arguments.goodput)
        sweep_loads(arguments.concurrency, arguments.request_rate)
        if not re.fullmatch(r"\d+(:\d+)?", arguments.prompt_words):
            raise ValueError("--prompt-words must be N or LOW:HIGH")
        if not arguments.ramp_up_s >= 0:  # also rejects nan
            raise ValueError("--ramp-up-s must not be negative")
    except ValueError as error:
        parser.error(str(error))
    try:
        result = asyncio.run(bench(arguments))
    except (httpx.HTTPError, OSError) as error:
        print(f"bench: cannot reach {arguments.base_url}: {error}", file=sys.stderr)
        return 1
    print(format_table(result))
    if arguments.output is not None:
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if arguments.plot is not None:
        plot_sweeps([result], arguments.plot)
    return 0 if all(run["completed"] for run in result["runs"]) else 1
