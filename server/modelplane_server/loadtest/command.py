"""`modelplane-server bench`: the command line, sweeps, the report table and the plots."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import platform
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from modelplane_server.loadtest.client import ENDPOINT_PATHS, Target, first_model
from modelplane_server.loadtest.run import Load, run_load
from modelplane_server.loadtest.statistics import Slo
from modelplane_server.loadtest.workload import MaxTokens, load_prompts, synthetic_prompts


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
