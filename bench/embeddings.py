"""Embeddings: sequential against dynamic batching, measured against the model's own batching gain.

1. In process: the embedded all-MiniLM-L6-v2, 32 short texts: 32 single forwards against one forward
   of all 32 (best of 3 each). That ratio is what batching can give at most at this batch size.
2. Over HTTP, one text per request, at concurrency 1, 8 and 32: the naive server
   (bench/naive_server.py: one forward per request under a lock) against Modelplane's server
   (its default: the embedded MiniLM, dynamic batching, max_wait_ms 5, batch 32), measured
   alternately point by point.

The target: Modelplane at 32 concurrent keeps >= 80% of the model's own speed-up, i.e.
(Modelplane req/s at 32) / (naive req/s at 32) >= 0.8 x (32 single forwards / one forward of 32).

Run: .venv/bin/python bench/embeddings.py   (writes bench/results/embeddings.json, embeddings.png)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # bench/ is a directory of scripts, not a package
from modelplane_server.loadtest.client import Target, first_model
from modelplane_server.loadtest.command import plot_sweeps
from modelplane_server.loadtest.run import Load, run_load
from modelplane_server.loadtest.workload import MaxTokens, synthetic_prompts
from serving import free_port, histogram, server

NAIVE = "naive (one forward per request)"
OURS = "modelplane (dynamic batching)"


def model_speedup(directory: Path, texts: list[str], threads: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()
    singles = [tokenizer(text, return_tensors="pt") for text in texts]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        model(**batch)  # warm-up
        single_times, batch_times = [], []
        for _ in range(3):
            began = time.perf_counter()
            for encoded in singles:
                model(**encoded)
            single_times.append(time.perf_counter() - began)
            began = time.perf_counter()
            model(**batch)
            batch_times.append(time.perf_counter() - began)
    return {
        "texts": len(texts),
        "single_forwards_s": min(single_times),
        "one_batched_forward_s": min(batch_times),
        "speedup": min(single_times) / min(batch_times),
        "padded_width": int(batch["input_ids"].shape[1]),
    }


def main() -> int:  # one linear script
    from modelplane_server.model.loading import embedded_embedding_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=320, help="per concurrency point")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="embeddings")
    arguments = parser.parse_args()
    started = time.perf_counter()
    directory = embedded_embedding_model()
    texts = [p.text for p in synthetic_prompts(32, (8, 16), common.SEED)]
    common.log("in-process: 32 single forwards vs one forward of 32")
    model = model_speedup(directory, texts, arguments.threads)
    common.log(f"model speed-up {model['speedup']:.2f}x")

    naive_url = f"http://127.0.0.1:{free_port()}"
    ours_url = f"http://127.0.0.1:{free_port()}"
    naive_command = [
        str(common.PYTHON), "bench/naive_server.py", "--embedding-model", str(directory),
        "--port", naive_url.rsplit(":", 1)[1],
    ]  # fmt: skip
    ours_command = [
        str(common.PYTHON), "-m", "modelplane_server", "--model", str(common.smollm2_dir()),
        "--host", "127.0.0.1",
        "--port", ours_url.rsplit(":", 1)[1], "--device", "cpu", "--log-level", "warning",
    ]  # fmt: skip
    results: dict[str, dict[str, Any]] = {
        NAIVE: {"label": NAIVE, "varied": "concurrency", "runs": []},
        OURS: {"label": OURS, "varied": "concurrency", "runs": []},
    }
    prompts = synthetic_prompts(arguments.requests, (8, 16), common.SEED)
    with (
        server(naive_command, naive_url, "/v1/models", arguments.threads),
        server(ours_command, ours_url, "/health/ready", arguments.threads),
    ):
        targets = {}
        for label, url in ((NAIVE, naive_url), (OURS, ours_url)):
            model_id = asyncio.run(first_model(url, {}))
            if label == OURS:
                model_id = "all-MiniLM-L6-v2"
            targets[label] = Target(url, "embeddings", model_id, stream=False)
            asyncio.run(  # warm-up
                run_load(
                    targets[label],
                    prompts,
                    MaxTokens.parse("1"),
                    Load(8),
                    num_requests=16,
                    max_duration_s=60,
                )
            )
        for concurrency in (int(value) for value in arguments.concurrency.split(",")):
            for label, target in targets.items():
                common.log(f"{label}: concurrency {concurrency}")
                batch_metric = "modelplane_embedding_batch_size"
                before = histogram(ours_url, batch_metric) if label == OURS else None
                run = asyncio.run(
                    run_load(
                        target,
                        prompts,
                        MaxTokens.parse("1"),
                        Load(concurrency),
                        num_requests=arguments.requests,
                        max_duration_s=240,
                        progress=sys.stderr,
                        progress_interval_s=10,
                    )
                )
                if before is not None:  # how full our batches were, from the server's histogram
                    after = histogram(ours_url, batch_metric)
                    batches = after[1] - before[1]
                    run["server_batches"] = batches
                    run["server_mean_batch_size"] = (after[0] - before[0]) / max(batches, 1)
                results[label]["runs"].append(run)
    by_concurrency = {
        label: {run["load"]["concurrency"]: run for run in result["runs"]}
        for label, result in results.items()
    }
    summary: dict[str, Any] = {"model_speedup_32": model["speedup"]}
    ours, naive = by_concurrency[OURS], by_concurrency[NAIVE]
    if 32 in ours and 32 in naive:
        server_speedup = ours[32]["request_throughput"] / naive[32]["request_throughput"]
        summary["server_speedup_32_vs_naive"] = server_speedup
        summary["kept_of_model_speedup"] = server_speedup / model["speedup"]
    if 32 in ours and 1 in ours:
        summary["modelplane_32_over_modelplane_1"] = (
            ours[32]["request_throughput"] / ours[1]["request_throughput"]
        )
    data = {
        "benchmark": "embeddings",
        "environment": {**common.environment(), "torch_threads": arguments.threads},
        "command": " ".join([".venv/bin/python", "bench/embeddings.py", *sys.argv[1:]]),
        "model": "all-MiniLM-L6-v2 (embedded, fp32)",
        "workload": {
            "texts": "synthetic, 8-16 words, one per request",
            "requests": arguments.requests,
        },
        "in_process": model,
        "summary": summary,
        "servers": results,
    }
    data["duration_s"] = time.perf_counter() - started
    path = common.write_result(arguments.output, data)
    plot_sweeps(
        list(results.values()),
        path.with_suffix(".png"),
        "Embeddings: sequential vs dynamic batching",
    )
    common.log(f"wrote {path} in {data['duration_s']:.0f} s: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
