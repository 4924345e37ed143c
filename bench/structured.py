"""Structured outputs at load: 32 concurrent chat requests on SmolLM2, constrained to JSON schemas
(`response_format` json_schema, strict, cycling over a set of schemas and prompts) against the same
requests unconstrained, on one Modelplane server, rounds alternating so drift in the shared
machine's load hits both alike.

Like for like: JSON answers are short and end at different steps, free text runs to `max_tokens`,
and a round's tokens/s depends on those lengths (the batch thins out as rows finish; the prefill is
spread over fewer tokens). So each unconstrained request generates exactly as many tokens as its
constrained twin did (`max_tokens` = that count, `ignore_eos`); the requests are seeded, so the
constrained lengths repeat from round to round. What differs is then only the grammar's work.

Reports output tokens/s of each mode (completion tokens of the round / the round's wall time), their
ratio, and the share of constrained responses that parse and validate against their schema.

Run: .venv/bin/python bench/structured.py [--rounds 3] [--concurrency 32] [--max-tokens 96]
(~3 min on the 2-core box; writes bench/results/structured.json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import jsonschema_rs
import openai

import common  # bench/ is a directory of scripts, not a package

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
CASES: list[tuple[str, dict[str, Any]]] = [
    ("Describe a fictional person.", PERSON),
    (
        "What colour is the sky, and how sure are you?",
        {
            "type": "object",
            "properties": {
                "colour": {"enum": ["red", "green", "blue", "grey"]},
                "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
            },
            "required": ["colour", "confidence"],
            "additionalProperties": False,
        },
    ),
    (
        "Name some cities in France.",
        {
            "type": "object",
            "properties": {
                "cities": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 24},
                    "minItems": 1,
                    "maxItems": 4,
                }
            },
            "required": ["cities"],
            "additionalProperties": False,
        },
    ),
    (
        "Describe a small software team.",
        {
            "type": "object",
            "properties": {
                "lead": PERSON,
                "size": {"type": "integer", "minimum": 1, "maximum": 12},
                "remote": {"type": "boolean"},
            },
            "required": ["lead", "size", "remote"],
            "additionalProperties": False,
        },
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def one_round(
    client: openai.AsyncOpenAI,
    model: str,
    concurrency: int,
    *,
    max_tokens: int,
    constrained: bool,
    lengths: list[int] | None = None,
) -> dict[str, Any]:
    """One round; unconstrained with `lengths`, request i generates exactly `lengths[i]` tokens."""

    async def one(index: int) -> tuple[int, bool | None]:
        prompt, schema = CASES[index % len(CASES)]
        extra: dict[str, Any] = {}
        limit = max_tokens
        if lengths is not None:
            limit = lengths[index]
            extra["extra_body"] = {"ignore_eos": True}
        if constrained:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": f"case{index % len(CASES)}",
                    "schema": schema,
                    "strict": True,
                },
            }
        answer = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            temperature=0.7,
            seed=index,
            max_tokens=limit,
            **extra,
        )
        tokens = answer.usage.completion_tokens if answer.usage else 0
        if not constrained:
            return tokens, None
        try:
            value = json.loads(answer.choices[0].message.content or "")
        except ValueError:
            return tokens, False
        return tokens, jsonschema_rs.validator_for(schema).is_valid(value)

    began = time.perf_counter()
    results = await asyncio.gather(*(one(index) for index in range(concurrency)))
    wall = time.perf_counter() - began
    tokens = sum(count for count, _ in results)
    valid = [ok for _, ok in results if ok is not None]
    return {
        "lengths": [count for count, _ in results],
        "wall_s": round(wall, 3),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "valid": sum(valid),
        "checked": len(valid),
    }


async def measure(url: str, rounds: int, concurrency: int, max_tokens: int) -> dict[str, Any]:
    async with openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="none", max_retries=0, timeout=600
    ) as client:
        model = (await client.models.list()).data[0].id
        # Warm-up: one of each, so grammar compilation caches and first-call costs are out.
        await one_round(client, model, len(CASES), max_tokens=16, constrained=True)
        await one_round(client, model, len(CASES), max_tokens=16, constrained=False)
        runs: dict[str, list[dict[str, Any]]] = {"unconstrained": [], "constrained": []}
        lengths: list[int] | None = None
        for round_index in range(rounds):
            # Constrained first in round 0 (its lengths set the baseline's), then alternating.
            order = ["constrained", "unconstrained"]
            if round_index % 2:
                order.reverse()
            for mode in order:
                constrained = mode == "constrained"
                result = await one_round(
                    client,
                    model,
                    concurrency,
                    max_tokens=max_tokens,
                    constrained=constrained,
                    lengths=None if constrained else lengths,
                )
                if constrained:
                    lengths = result["lengths"]
                runs[mode].append(result)
                common.log(f"round {round_index} {mode}: {result}")
    ratios = [
        constrained["tokens_per_s"] / unconstrained["tokens_per_s"]
        for constrained, unconstrained in zip(
            runs["constrained"], runs["unconstrained"], strict=True
        )
    ]
    valid = sum(run["valid"] for run in runs["constrained"])
    checked = sum(run["checked"] for run in runs["constrained"])
    return {
        "runs": runs,
        "throughput_ratio_per_round": [round(ratio, 3) for ratio in ratios],
        "throughput_ratio_median": round(statistics.median(ratios), 3),
        "validity": {"valid": valid, "checked": checked, "rate": round(valid / checked, 4)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model_dir = common.smollm2_dir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    common.CACHE.mkdir(parents=True, exist_ok=True)
    log_path = common.CACHE / f"server-structured-{time.time():.0f}.log"
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                str(common.PYTHON),
                "-m",
                "modelplane_server",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--model={model_dir}",
                "--embedding-model=none",
                "--device=cpu",
                "--dtype=float32",
                f"--max-batch-size={args.concurrency}",
            ],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=common.ROOT,
        )
        try:
            _wait(url, process, log_path)
            result = asyncio.run(measure(url, args.rounds, args.concurrency, args.max_tokens))
        finally:
            process.terminate()
            process.wait(timeout=30)
    data = {
        "environment": common.environment(),
        "command": " ".join(sys.argv),
        "settings": vars(args),
        **result,
    }
    path = common.write_result("structured", data)
    print(json.dumps({key: data[key] for key in ("throughput_ratio_median", "validity")}))
    print(f"wrote {path}")


def _wait(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/health/startup", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start; see {log_path}")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
