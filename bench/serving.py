"""HTTP-level comparison: a naive one-request-at-a-time server (bench/naive_server.py:
generate() per request under a lock) against Modelplane's server, both on 127.0.0.1 with the same
model and torch threads, driven by `modelplane-server bench`'s load generator at concurrency 1, 8,
32 and at Poisson rates. The two servers are measured alternately, point by point, so drift in the
shared machine's load hits both alike.

Also: the HTTP overhead at concurrency 1 (client end-to-end minus the engine's own end-to-end time,
read from the server's /metrics before and after), and TTFT p99 at 32 against TTFT at 1, twice:
for the closed loop's synchronised burst (32 requests at t=0, every prompt prefilled before the
last first token) and for Modelplane at a steady 32 in flight (workers ramped up over
`--ramp-up-s`, capped-exponential output lengths so completions, and so arrivals, spread out).

Run: .venv/bin/python bench/serving.py   (~11 min on the 2-core box; the naive server's turns are
most of it)
(writes bench/results/serving.json, serving.png, serving-rate.png)

The peer, `transformers serve --continuous-batching` (transformers' own OpenAI-compatible server;
its serving extras fastapi, uvicorn and openai are already among ours), loads the same weights
directory and takes the same client and prompts. It ignores `ignore_eos`, so it is compared greedy
with EOS honoured on both (the same weights then give the same outputs; the result records the mean
output tokens of each), on the chat endpoint, rounds alternating which server goes first:

    .venv/bin/python bench/serving.py --servers modelplane,transformers-serve --endpoint chat \
        --no-ignore-eos --concurrency 1,32 --requests 32 --requests-at-1 8 --rounds 2 \
        --max-tokens 16:128 --rates "" --no-steady --output serving-transformers-serve
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx

import common  # bench/ is a directory of scripts, not a package
from modelplane_server.loadtest.client import Target, first_model
from modelplane_server.loadtest.command import plot_sweeps
from modelplane_server.loadtest.run import Load, run_load
from modelplane_server.loadtest.statistics import Slo
from modelplane_server.loadtest.workload import MaxTokens, synthetic_prompts

NAIVE = "naive (generate() under a lock)"
OURS = "modelplane"
PEER = "transformers serve --continuous-batching"
SERVER_NAMES = {"naive": NAIVE, "modelplane": OURS, "transformers-serve": PEER}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(command: list[str], url: str, ready_path: str, threads: int) -> Iterator[None]:
    # transformers serve's /v1/models scans the hub cache and fails when there is none: point it at
    # an empty one of our own (nothing is downloaded: HF_HUB_OFFLINE).
    hub_cache = common.CACHE / "hf-hub-empty"
    hub_cache.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub_cache),
    }
    log = (common.CACHE / f"server-{Path(command[1]).name}-{time.time():.0f}.log").open("w")
    process = subprocess.Popen(
        command, env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=common.ROOT
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited with {process.returncode}; see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{command} not ready in 300 s")
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def histogram(url: str, metric: str) -> tuple[float, float]:
    """(sum, count) of one of the server's histograms, from /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    values = {}
    for name in ("sum", "count"):
        match = re.search(rf"^{metric}_{name} (\S+)$", text, re.M)
        values[name] = float(match.group(1)) if match else 0.0
    return values["sum"], values["count"]


def engine_e2e(url: str) -> tuple[float, float]:
    """(sum, count) of the server's own request end-to-end histogram."""
    return histogram(url, "modelplane_e2e_request_latency_seconds")


def run_point(
    target: Target, load: Load, requests: int, max_tokens: str, seed: int, *, words: tuple[int, int]
) -> dict[str, Any]:
    prompts = synthetic_prompts(requests, words, seed)
    return asyncio.run(
        run_load(
            target,
            prompts,
            MaxTokens.parse(max_tokens),
            load,
            num_requests=requests,
            max_duration_s=240,
            seed=seed,
            slo=Slo(ttft_ms=1000, tpot_ms=100),
            progress=sys.stderr,
            progress_interval_s=10,
        )
    )


def commands(model_dir: str, urls: dict[str, str]) -> dict[str, tuple[list[str], str]]:
    """Each server's command line and readiness path; every one binds 127.0.0.1 only."""

    def port(label: str) -> str:
        return urls.get(label, ":0").rsplit(":", 1)[1]

    return {
        NAIVE: (
            [
                str(common.PYTHON),
                "bench/naive_server.py",
                "--model",
                model_dir,
                "--port",
                port(NAIVE),
            ],
            "/v1/models",
        ),
        OURS: (
            [
                str(common.PYTHON),
                "-m",
                "modelplane_server",
                "--model",
                model_dir,
                "--host",
                "127.0.0.1",
                "--port",
                port(OURS),
                "--embedding-model",
                "none",
                "--device",
                "cpu",
                "--log-level",
                "warning",
            ],
            "/health/ready",
        ),
        PEER: (
            [
                str(common.PYTHON.parent / "transformers"),
                "serve",
                "--continuous-batching",
                "--host",
                "127.0.0.1",
                "--port",
                port(PEER),
                "--device",
                "cpu",
                "--log-level",
                "warning",
                # Left to itself on CPU it sizes its paged KV cache from the machine's memory
                # (13 GB RSS here, which starved the machine); 512 blocks x 32 tokens hold 32
                # requests of up to 512 tokens, all this benchmark sends.
                "--cb-block-size",
                "32",
                "--cb-num-blocks",
                "512",
                model_dir,
            ],
            "/health",
        ),
    }


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Modelplane over each other server, per concurrency: output tokens/s (higher is better)
    and TTFT p50 (lower is better), each the median of the rounds' ratios (one round runs every
    server at a point back to back, so a round's ratio shares the machine's load of the moment)."""
    ours = {(run["round"], run["load"]["concurrency"]): run for run in results[OURS]["runs"]}
    comparisons: dict[str, Any] = {}
    for label, result in results.items():
        if label == OURS:
            continue
        throughput: dict[int, list[float]] = {}
        ttft: dict[int, list[float]] = {}
        for run in result["runs"]:
            key = (run["round"], run["load"]["concurrency"])
            if key not in ours or not run["output_throughput"]:
                continue
            concurrency = key[1]
            throughput.setdefault(concurrency, []).append(
                ours[key]["output_throughput"] / run["output_throughput"]
            )
            ttft.setdefault(concurrency, []).append(
                ours[key]["ttft_ms"]["p50"] / run["ttft_ms"]["p50"]
            )
        comparisons[label] = {
            "output_throughput_ratio_by_concurrency": {
                str(c): median(v) for c, v in sorted(throughput.items())
            },
            "ttft_p50_ratio_by_concurrency": {str(c): median(v) for c, v in sorted(ttft.items())},
            # Without ignore_eos the outputs end where each server's greedy decoding ends: these
            # show whether both generated alike.
            "mean_output_tokens": {
                name: sum(r["output_tokens"] for r in runs)
                / max(sum(r["completed"] for r in runs), 1)
                for name, runs in ((OURS, results[OURS]["runs"]), (label, result["runs"]))
            },
            "rounds": {
                str(c): {"throughput": v, "ttft_p50": ttft[c]}
                for c, v in sorted(throughput.items())
            },
        }
    return comparisons


def main() -> int:  # noqa: PLR0912, PLR0915  # one linear script
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", choices=sorted(common.MODEL_DIRS))
    parser.add_argument(
        "--servers",
        default="naive,modelplane",
        help=f"comma-separated, from {', '.join(SERVER_NAMES)}",
    )
    parser.add_argument("--endpoint", default="completions", choices=["completions", "chat"])
    parser.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="transformers serve ignores the field: compare with it with --no-ignore-eos (greedy "
        "on the same weights, so the same outputs)",
    )
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=1, help="each point this often, alternating")
    parser.add_argument("--rates", default="0.5,1,2", help="Poisson points; empty for none")
    parser.add_argument("--requests", type=int, default=32, help="per concurrency point")
    parser.add_argument(
        "--requests-at-1", type=int, default=0, help="at concurrency 1 (default: --requests)"
    )
    parser.add_argument("--rate-requests", type=int, default=24, help="per rate point")
    parser.add_argument("--max-tokens", default="32")
    parser.add_argument("--prompt-words", default="32:128", help="LOW:HIGH words per prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--steady", action=argparse.BooleanOptionalAction, default=True,
        help="Modelplane's steady 32-in-flight point",
    )  # fmt: skip
    parser.add_argument("--steady-requests", type=int, default=96, help="steady-state point")
    parser.add_argument("--steady-max-tokens", default="exp:32:96")
    parser.add_argument("--ramp-up-s", type=float, default=10.0)
    parser.add_argument("--output", default="serving")
    arguments = parser.parse_args()
    started = time.perf_counter()
    labels = [SERVER_NAMES[name.strip()] for name in arguments.servers.split(",")]
    low, high = (int(part) for part in arguments.prompt_words.split(":"))
    words = (low, high)
    model_dir = str(common.MODEL_DIRS[arguments.model]())
    urls = {label: f"http://127.0.0.1:{free_port()}" for label in labels}
    launch = commands(model_dir, urls)

    def target(label: str, model: str) -> Target:
        return Target(
            urls[label],
            arguments.endpoint,
            model,
            stream=True,
            ignore_eos=arguments.ignore_eos,
            requires_done=label != PEER,
        )

    def point(label: str, load: Load, requests: int, max_tokens: str, seed: int) -> dict[str, Any]:
        return run_point(targets[label], load, requests, max_tokens, seed, words=words)

    targets = {label: target(label, "") for label in labels}
    results: dict[str, dict[str, Any]] = {
        label: {"label": label, "runs": [], "rate_runs": []} for label in labels
    }
    overhead: dict[str, Any] = {}
    steady: dict[str, Any] | None = None
    common.log(
        f"starting {', '.join(labels)} ({arguments.model}, torch threads {arguments.threads})"
    )
    with contextlib.ExitStack() as servers:
        for label in labels:
            command, ready_path = launch[label]
            servers.enter_context(server(command, urls[label], ready_path, arguments.threads))
        for label in labels:
            # transformers serve lists hub-cache models only; it serves the one it was given.
            model = model_dir if label == PEER else asyncio.run(first_model(urls[label], {}))
            targets[label] = target(label, model)
            point(label, Load(4), 8, "4", 99)  # warm-up
        concurrencies = [int(value) for value in arguments.concurrency.split(",")]
        for round_index in range(arguments.rounds):
            # Reverse the order every other round, so neither server always runs first.
            order = labels if round_index % 2 == 0 else labels[::-1]
            for concurrency in concurrencies:
                for label in order:
                    common.log(f"round {round_index}: {label}: concurrency {concurrency}")
                    before = engine_e2e(urls[OURS]) if label == OURS else (0.0, 0.0)
                    run = point(
                        label,
                        Load(concurrency),
                        arguments.requests_at_1 or arguments.requests
                        if concurrency == 1
                        else arguments.requests,
                        arguments.max_tokens,
                        common.SEED + round_index,
                    )
                    run["round"] = round_index
                    if label == OURS:
                        after = engine_e2e(urls[OURS])
                        count = after[1] - before[1]
                        engine_ms = 1000 * (after[0] - before[0]) / max(count, 1)
                        run["server_engine_e2el_mean_ms"] = engine_ms
                        if concurrency == 1 and round_index == 0:
                            overhead = {
                                "client_e2el_mean_ms": run["e2el_ms"]["mean"],
                                "engine_e2el_mean_ms": engine_ms,
                                "http_overhead_ms": run["e2el_ms"]["mean"] - engine_ms,
                                "requests": count,
                            }
                    results[label]["runs"].append(run)
        if arguments.steady and OURS in labels:
            common.log(f"{OURS}: steady 32 in flight (ramp-up {arguments.ramp_up_s:g} s)")
            steady = point(
                OURS,
                Load(32, ramp_up_s=arguments.ramp_up_s),
                arguments.steady_requests,
                arguments.steady_max_tokens,
                common.SEED,
            )
        rates = [float(value) for value in arguments.rates.split(",") if value]
        for rate in rates:
            for label in labels:
                common.log(f"{label}: Poisson {rate} req/s")
                results[label]["rate_runs"].append(
                    point(
                        label,
                        Load(None, rate),
                        arguments.rate_requests,
                        arguments.max_tokens,
                        common.SEED,
                    )
                )
    summary: dict[str, Any] = {"http_overhead_at_concurrency_1": overhead}
    if OURS in results:
        ours_runs = {
            run["load"]["concurrency"]: run for run in results[OURS]["runs"] if run["round"] == 0
        }
        if 1 in ours_runs and 32 in ours_runs:
            summary["ttft_p99_at_32_over_ttft_p50_at_1"] = (
                ours_runs[32]["ttft_ms"]["p99"] / ours_runs[1]["ttft_ms"]["p50"]
            )
        if 1 in ours_runs and steady is not None:
            at_1 = ours_runs[1]["ttft_ms"]["p50"]
            summary["steady_32"] = {
                "ttft_p50_ms": steady["ttft_ms"]["p50"],
                "ttft_p99_ms": steady["ttft_ms"]["p99"],
                "ttft_p99_over_ttft_p50_at_1": steady["ttft_ms"]["p99"] / at_1,
                "output_throughput": steady["output_throughput"],
            }
        summary["modelplane_over"] = compare(results)
    data = {
        "benchmark": "serving",
        "environment": {**common.environment(), "torch_threads": arguments.threads},
        "command": " ".join([".venv/bin/python", "bench/serving.py", *sys.argv[1:]]),
        "model": arguments.model,
        "workload": {
            "endpoint": f"/v1/{arguments.endpoint}, streaming, temperature 0, ignore_eos "
            f"{arguments.ignore_eos}",
            "prompts": f"synthetic, {low}-{high} words",
            "max_tokens": arguments.max_tokens,
            "requests_per_concurrency_point": arguments.requests,
            "requests_at_concurrency_1": arguments.requests_at_1 or arguments.requests,
            "rounds": arguments.rounds,
            "requests_per_rate_point": arguments.rate_requests,
            "steady_32": {
                "requests": arguments.steady_requests,
                "max_tokens": arguments.steady_max_tokens,
                "ramp_up_s": arguments.ramp_up_s,
            }
            if steady is not None
            else None,
            "goodput_slo": {"ttft_ms": 1000, "tpot_ms": 100},
        },
        "summary": summary,
        "servers": results,
        "steady_32_run": steady,
    }
    data["duration_s"] = time.perf_counter() - started
    path = common.write_result(arguments.output, data)
    names = " vs ".join(labels)
    sweeps = [{"label": label, "varied": "concurrency", **r} for label, r in results.items()]
    plot_sweeps(sweeps, path.with_suffix(".png"), f"HTTP, {arguments.model}: {names}")
    if rates:
        rate_sweeps = [
            {"label": label, "varied": "rate", "runs": r["rate_runs"]}
            for label, r in results.items()
        ]
        plot_sweeps(
            rate_sweeps,
            path.with_name(f"{arguments.output}-rate.png"),
            f"HTTP, {arguments.model}: Poisson arrivals",
        )
    common.log(f"wrote {path} in {data['duration_s']:.0f} s: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
