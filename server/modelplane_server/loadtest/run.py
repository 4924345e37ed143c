"""A run: requests sent at a `Load` (closed-loop workers or Poisson arrivals), with progress on
stderr."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import httpx

from modelplane_server.loadtest.client import RequestResult, Target, request_body, send_request
from modelplane_server.loadtest.statistics import Slo, summarize
from modelplane_server.loadtest.workload import MaxTokens, Prompt


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
