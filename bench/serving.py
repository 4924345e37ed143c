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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(command: list[str], url: str, ready_path: str, threads: int) -> Iterator[None]:
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
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
    target: Target, load: Load, requests: int, max_tokens: str, seed: int
) -> dict[str, Any]:
    prompts = synthetic_prompts(requests, (32, 128), seed)
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


def main() -> int:  # noqa: PLR0915  # one linear script
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", choices=sorted(common.MODEL_DIRS))
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rates", default="0.5,1,2")
    parser.add_argument("--requests", type=int, default=32, help="per concurrency point")
    parser.add_argument("--rate-requests", type=int, default=24, help="per rate point")
    parser.add_argument("--max-tokens", default="32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steady-requests", type=int, default=96, help="steady-state point")
    parser.add_argument("--steady-max-tokens", default="exp:32:96")
    parser.add_argument("--ramp-up-s", type=float, default=10.0)
    parser.add_argument("--output", default="serving")
    arguments = parser.parse_args()
    started = time.perf_counter()
    model_dir = str(common.MODEL_DIRS[arguments.model]())
    naive_url = f"http://127.0.0.1:{free_port()}"
    ours_url = f"http://127.0.0.1:{free_port()}"
    naive_command = [
        str(common.PYTHON), "bench/naive_server.py", "--model", model_dir,
        "--port", naive_url.rsplit(":", 1)[1],
    ]  # fmt: skip
    ours_command = [
        str(common.PYTHON), "-m", "modelplane_server", "--model", model_dir,
        "--host", "127.0.0.1", "--port", ours_url.rsplit(":", 1)[1], "--embedding-model", "none",
        "--device", "cpu", "--log-level", "warning",
    ]  # fmt: skip
    targets = {
        NAIVE: Target(naive_url, "completions", "", stream=True, ignore_eos=True),
        OURS: Target(ours_url, "completions", "", stream=True, ignore_eos=True),
    }
    results: dict[str, dict[str, Any]] = {
        label: {"label": label, "runs": [], "rate_runs": []} for label in targets
    }
    overhead: dict[str, Any] = {}
    common.log(f"starting both servers ({arguments.model}, torch threads {arguments.threads})")
    with (
        server(naive_command, naive_url, "/v1/models", arguments.threads),
        server(ours_command, ours_url, "/health/ready", arguments.threads),
    ):
        for label, target in list(targets.items()):
            model = asyncio.run(first_model(target.base_url, {}))
            targets[label] = Target(
                target.base_url, "completions", model, stream=True, ignore_eos=True
            )
            run_point(targets[label], Load(4), 8, "4", seed=99)  # warm-up
        for concurrency in (int(value) for value in arguments.concurrency.split(",")):
            for label, target in targets.items():
                common.log(f"{label}: concurrency {concurrency}")
                before = engine_e2e(ours_url) if label == OURS else (0.0, 0.0)
                run = run_point(
                    target,
                    Load(concurrency),
                    arguments.requests,
                    arguments.max_tokens,
                    common.SEED,
                )
                if label == OURS:
                    after = engine_e2e(ours_url)
                    count = after[1] - before[1]
                    engine_ms = 1000 * (after[0] - before[0]) / max(count, 1)
                    run["server_engine_e2el_mean_ms"] = engine_ms
                    if concurrency == 1:
                        overhead = {
                            "client_e2el_mean_ms": run["e2el_ms"]["mean"],
                            "engine_e2el_mean_ms": engine_ms,
                            "http_overhead_ms": run["e2el_ms"]["mean"] - engine_ms,
                            "requests": count,
                        }
                results[label]["runs"].append(run)
        common.log(f"{OURS}: steady 32 in flight (ramp-up {arguments.ramp_up_s:g} s)")
        steady = run_point(
            targets[OURS],
            Load(32, ramp_up_s=arguments.ramp_up_s),
            arguments.steady_requests,
            arguments.steady_max_tokens,
            common.SEED,
        )
        rates = [float(value) for value in arguments.rates.split(",") if value]
        for rate in rates:
            for label, target in targets.items():
                common.log(f"{label}: Poisson {rate} req/s")
                results[label]["rate_runs"].append(
                    run_point(
                        target,
                        Load(None, rate),
                        arguments.rate_requests,
                        arguments.max_tokens,
                        common.SEED,
                    )
                )
    ours_runs = {run["load"]["concurrency"]: run for run in results[OURS]["runs"]}
    naive_runs = {run["load"]["concurrency"]: run for run in results[NAIVE]["runs"]}
    summary: dict[str, Any] = {"http_overhead_at_concurrency_1": overhead}
    if 1 in ours_runs and 32 in ours_runs:
        summary["ttft_p99_at_32_over_ttft_p50_at_1"] = (
            ours_runs[32]["ttft_ms"]["p99"] / ours_runs[1]["ttft_ms"]["p50"]
        )
        at_1 = ours_runs[1]["ttft_ms"]["p50"]
        summary["steady_32"] = {
            "ttft_p50_ms": steady["ttft_ms"]["p50"],
            "ttft_p99_ms": steady["ttft_ms"]["p99"],
            "ttft_p99_over_ttft_p50_at_1": steady["ttft_ms"]["p99"] / at_1,
            "output_throughput": steady["output_throughput"],
        }
    summary["output_throughput_ratio_by_concurrency"] = {
        str(c): ours_runs[c]["output_throughput"] / naive_runs[c]["output_throughput"]
        for c in ours_runs
        if c in naive_runs and naive_runs[c]["output_throughput"]
    }
    data = {
        "benchmark": "serving",
        "environment": {**common.environment(), "torch_threads": arguments.threads},
        "command": " ".join([".venv/bin/python", "bench/serving.py", *sys.argv[1:]]),
        "model": arguments.model,
        "workload": {
            "endpoint": "/v1/completions, streaming, ignore_eos, temperature 0",
            "prompts": "synthetic, 32-128 words",
            "max_tokens": arguments.max_tokens,
            "requests_per_concurrency_point": arguments.requests,
            "requests_per_rate_point": arguments.rate_requests,
            "steady_32": {
                "requests": arguments.steady_requests,
                "max_tokens": arguments.steady_max_tokens,
                "ramp_up_s": arguments.ramp_up_s,
            },
            "goodput_slo": {"ttft_ms": 1000, "tpot_ms": 100},
        },
        "summary": summary,
        "servers": results,
        "steady_32_run": steady,
    }
    data["duration_s"] = time.perf_counter() - started
    path = common.write_result(arguments.output, data)
    sweeps = [{"label": label, "varied": "concurrency", **r} for label, r in results.items()]
    plot_sweeps(sweeps, path.with_suffix(".png"), f"HTTP, {arguments.model}: naive vs Modelplane")
    rate_sweeps = [
        {"label": label, "varied": "rate", "runs": r["rate_runs"]} for label, r in results.items()
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
