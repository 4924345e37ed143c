"""Prefix caching and the per-step prefill cap, over HTTP against `modelplane-server` (SmolLM2, one
torch thread), each against a baseline server measured in the same run, rounds alternating (the
order flips every round) so drift on the shared machine hits both alike.

- `prefix`: a shared ~1,000-token system prompt before short distinct questions, 16 concurrent
  closed-loop workers; `--prefix-cache-tokens 8192` against `0`. Each server first serves the
  system prompt once (a deployment's steady state: the prompt has been seen). TTFT p50 ratio.
- `cap`: TTFT at concurrency 1 and at a steady 32 in flight (workers ramped up, capped-exponential
  output lengths, as bench/serving.py's steady point), and ITL p99 there, for each
  `--max-prefill-tokens` in `--caps` (4096 = the step's whole budget: no cap, the old behaviour).

Run: .venv/bin/python bench/prefill.py prefix   (~4 min on the 2-core box)
     .venv/bin/python bench/prefill.py cap      (~6 min)
(writes bench/results/prefill-prefix.json or prefill-cap.json)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transformers import AutoTokenizer

import common  # bench/ is a directory of scripts, not a package
import serving
from modelplane_server.loadtest.client import Target, first_model
from modelplane_server.loadtest.run import Load, run_load
from modelplane_server.loadtest.workload import MaxTokens, Prompt, synthetic_prompts


def server_command(model_dir: str, url: str, *flags: str) -> list[str]:
    return [
        str(common.PYTHON), "-m", "modelplane_server", "--model", model_dir,
        "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--embedding-model", "none",
        "--device", "cpu", "--log-level", "warning", *flags,
    ]  # fmt: skip


def run(target: Target, prompts: list[Prompt], load: Load, requests: int, max_tokens: str) -> Any:
    return asyncio.run(
        run_load(
            target,
            prompts,
            MaxTokens.parse(max_tokens),
            load,
            num_requests=requests,
            max_duration_s=300,
            seed=common.SEED,
            progress=sys.stderr,
            progress_interval_s=15,
        )
    )


def brief(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": result.get("completed"),
        "ttft_ms": result["ttft_ms"],
        "itl_ms": result["itl_ms"],
        "output_throughput": result["output_throughput"],
    }


def shared_prefix_prompts(
    model_dir: str, count: int, system_tokens: int
) -> tuple[list[Prompt], int]:
    """Distinct questions after one system prompt of about `system_tokens` tokens."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    words = synthetic_prompts(64, (40, 40), common.SEED)
    system = "You are a helpful assistant. Follow these rules."
    index = 0
    while len(tokenizer.encode(system)) < system_tokens:
        system += " " + words[index % len(words)].text
        index += 1
    rng = random.Random(common.SEED)  # a seeded workload
    questions = synthetic_prompts(count, (8, 24), rng.randrange(1 << 30))
    prompts = [Prompt(f"{system}\n\nQuestion {i}: {q.text}") for i, q in enumerate(questions)]
    return prompts, len(tokenizer.encode(system))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["prefix", "cap"])
    parser.add_argument("--model", default="smollm2", choices=sorted(common.MODEL_DIRS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32, help="prefix: per round and server")
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--caps", default="4096,512,256")
    parser.add_argument("--single-requests", type=int, default=12, help="cap: concurrency 1")
    parser.add_argument("--steady-requests", type=int, default=80, help="cap: 32 in flight")
    parser.add_argument("--ramp-up-s", type=float, default=10.0)
    arguments = parser.parse_args()
    started = time.perf_counter()
    model_dir = str(common.MODEL_DIRS[arguments.model]())
    if arguments.part == "prefix":
        configs = {"prefix cache on": ["--prefix-cache-tokens", "8192"]}
        configs["prefix cache off"] = ["--prefix-cache-tokens", "0"]
    else:
        configs = {
            f"max-prefill-tokens {cap}": ["--max-prefill-tokens", cap]
            for cap in arguments.caps.split(",")
        }
    urls = {label: f"http://127.0.0.1:{serving.free_port()}" for label in configs}
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in configs}
    workload: dict[str, Any] = {}
    if arguments.part == "prefix":
        prompts, system_tokens = shared_prefix_prompts(
            model_dir, arguments.requests, arguments.system_tokens
        )
        workload = {
            "system_prompt_tokens": system_tokens,
            "concurrency": 16,
            "requests_per_round": arguments.requests,
            "max_tokens": 8,
        }
    else:
        prompts = synthetic_prompts(arguments.steady_requests, (32, 128), common.SEED)
        workload = {
            "prompts": "synthetic, 32-128 words",
            "concurrency_1": {"requests": arguments.single_requests, "max_tokens": "32"},
            "steady_32": {
                "requests": arguments.steady_requests,
                "max_tokens": "exp:32:96",
                "ramp_up_s": arguments.ramp_up_s,
            },
        }
    common.log(f"starting {len(configs)} servers ({arguments.model}): {workload}")
    with contextlib.ExitStack() as stack:
        targets = {}
        for label, flags in configs.items():
            stack.enter_context(
                serving.server(
                    server_command(model_dir, urls[label], *flags),
                    urls[label],
                    "/health/ready",
                    arguments.threads,
                )
            )
            model = asyncio.run(first_model(urls[label], {}))
            targets[label] = Target(urls[label], "completions", model, stream=True, ignore_eos=True)
            warm = prompts[:1] if arguments.part == "prefix" else prompts[:4]
            run(targets[label], warm, Load(1), len(warm), "4")
        for round_number in range(arguments.rounds):
            order = list(configs) if round_number % 2 == 0 else list(reversed(configs))
            for label in order:
                common.log(f"round {round_number + 1}: {label}")
                target = targets[label]
                if arguments.part == "prefix":
                    point = {
                        "shared_16": brief(run(target, prompts, Load(16), arguments.requests, "8"))
                    }
                else:
                    single = run(target, prompts, Load(1), arguments.single_requests, "32")
                    steady = run(
                        target,
                        prompts,
                        Load(32, ramp_up_s=arguments.ramp_up_s),
                        arguments.steady_requests,
                        "exp:32:96",
                    )
                    point = {"concurrency_1": brief(single), "steady_32": brief(steady)}
                results[label].append(point)
    summary = summarize(arguments.part, results)
    data = {
        "benchmark": f"prefill-{arguments.part}",
        "environment": {**common.environment(), "torch_threads": arguments.threads},
        "command": " ".join([".venv/bin/python", "bench/prefill.py", *sys.argv[1:]]),
        "model": arguments.model,
        "workload": workload,
        "summary": summary,
        "rounds": results,
        "duration_s": time.perf_counter() - started,
    }
    path = common.write_result(f"prefill-{arguments.part}", data)
    common.log(f"wrote {path} in {data['duration_s']:.0f} s: {summary}")
    return 0


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def summarize(part: str, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per round ratios, and their medians over the rounds."""
    if part == "prefix":
        on, off = results["prefix cache on"], results["prefix cache off"]
        ratios = [
            b["shared_16"]["ttft_ms"]["p50"] / a["shared_16"]["ttft_ms"]["p50"]
            for a, b in zip(on, off, strict=True)
        ]
        return {
            "ttft_p50_ms_on": [r["shared_16"]["ttft_ms"]["p50"] for r in on],
            "ttft_p50_ms_off": [r["shared_16"]["ttft_ms"]["p50"] for r in off],
            "ttft_p50_off_over_on_per_round": ratios,
            "ttft_p50_off_over_on_median": median(ratios),
        }
    summary: dict[str, Any] = {}
    for label, rounds in results.items():
        summary[label] = {
            "ttft_p50_ms_at_1": [r["concurrency_1"]["ttft_ms"]["p50"] for r in rounds],
            "steady_ttft_p50_ms": [r["steady_32"]["ttft_ms"]["p50"] for r in rounds],
            "steady_ttft_p99_ms": [r["steady_32"]["ttft_ms"]["p99"] for r in rounds],
            "steady_itl_p99_ms": [r["steady_32"]["itl_ms"]["p99"] for r in rounds],
            "steady_itl_p50_ms": [r["steady_32"]["itl_ms"]["p50"] for r in rounds],
            "steady_output_throughput": [r["steady_32"]["output_throughput"] for r in rounds],
            "steady_ttft_p99_over_ttft_p50_at_1": [
                r["steady_32"]["ttft_ms"]["p99"] / r["concurrency_1"]["ttft_ms"]["p50"]
                for r in rounds
            ],
        }
    return summary


if __name__ == "__main__":
    sys.exit(main())
