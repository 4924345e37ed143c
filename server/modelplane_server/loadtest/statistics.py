"""What a run's results come to: percentiles, distributions, SLOs and goodput, throughput."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from modelplane_server.loadtest.client import RequestResult

PERCENTILES = (50, 90, 99)


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
