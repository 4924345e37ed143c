"""Print the Markdown tables of BENCHMARKS.md from bench/results/*.json (so no number is retyped).

Run: .venv/bin/python bench/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def ms(summary: dict[str, float] | None, key: str) -> str:
    return f"{summary[key]:.0f}" if summary else "-"


def engine_tables(data: dict[str, Any]) -> list[str]:
    lines = []
    for model in data["models"]:
        lines += [
            f"**{model['model']}** ({model['parameters'] / 1e6:.1f}M parameters, fp32, "
            f"attention `{model['attention']}`) — useful output tokens/s (parity vs sequential)",
            "",
            "| workload | sequential `generate()` | best static batch | transformers CB "
            "| Modelplane | ours / seq | ours / static | ours / CB | ours / uniform-32 ceiling |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, workload in model["workloads"].items():
            engines, ratios = workload["engines"], workload["ratios"]

            def cell(engine: str, engines: dict[str, Any] = engines) -> str:
                result = engines[engine]
                text = f"{result['tokens_per_s']:.1f}"
                if "batch_size" in result:
                    text += f" (b={result['batch_size']})"
                if "parity" in result:
                    text += f" [{result['parity']['matching']}/{result['parity']['of']}]"
                return text

            lines.append(
                f"| {name} ({workload['requests']} req, {workload['useful_tokens']} tok) "
                f"| {cell('sequential generate()')} | {cell('static batch (best)')} "
                f"| {cell('transformers CB')} | {cell('modelplane')} "
                f"| {ratios['modelplane / sequential']:.2f}x "
                f"| {ratios['modelplane / best static']:.2f}x "
                f"| {ratios['modelplane / transformers CB']:.2f}x "
                f"| {ratios['modelplane / uniform static-32 ceiling']:.0%} |"
            )
        lines.append("")
        lines.append("Modelplane engine profile (best round):")
        lines.append("")
        lines.append(
            "| workload | steps | mean batch | prefill steps | in steps (s) | outside (s) |"
        )
        lines.append("|---|---|---|---|---|---|")
        for name, workload in model["workloads"].items():
            profile = workload["engines"]["modelplane"]["profile"]
            lines.append(
                f"| {name} | {profile['steps']} | {profile['mean_batch_size']:.1f} "
                f"| {profile['prefill_steps']} | {profile['step_time_s']:.2f} "
                f"| {profile['outside_steps_s']:.2f} |"
            )
        lines.append("")
    return lines


def sweep_table(servers: dict[str, Any], key: str = "runs") -> list[str]:
    lines = [
        "| server | load | ok/err | req/s | out tok/s | TTFT p50 / p99 (ms) | TPOT mean (ms) "
        "| ITL p50 (ms) | E2E p50 / p99 (ms) | goodput (req/s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, server in servers.items():
        for run in server[key]:
            load = run["load"]
            where = f"c={load['concurrency']}" if load["rate"] == "inf" else f"{load['rate']} req/s"
            if load.get("ramp_up_s"):
                where += f", ramp-up {load['ramp_up_s']:g} s"
            if "server_mean_batch_size" in run:
                where += f" (mean batch {run['server_mean_batch_size']:.1f})"
            goodput = run.get("goodput", {}).get("request_goodput")
            lines.append(
                f"| {label} | {where} | {run['completed']}/{run['failed']} "
                f"| {run['request_throughput']:.2f} | {run['output_throughput']:.1f} "
                f"| {ms(run['ttft_ms'], 'p50')} / {ms(run['ttft_ms'], 'p99')} "
                f"| {ms(run['tpot_ms'], 'mean')} | {ms(run['itl_ms'], 'p50')} "
                f"| {ms(run['e2el_ms'], 'p50')} / {ms(run['e2el_ms'], 'p99')} "
                f"| {'-' if goodput is None else f'{goodput:.2f}'} |"
            )
    return lines


def main() -> int:
    out: list[str] = []
    names = ("engine", "engine-smollm2-var64", "serving", "serving-transformers-serve")
    for name in (*names, "embeddings", "operator_scale"):
        data = load(name)
        if data is None:
            continue
        env = data["environment"]
        out += [f"### {name}", "", f"`{data['command']}` — {data.get('duration_s', 0):.0f} s, "
                f"{env['date']}, commit {env['commit']}, load average at start "
                f"{env['load_average_at_start']}", ""]  # fmt: skip
        if name.startswith("engine"):
            out += engine_tables(data)
        elif name.startswith("serving"):
            out += ["```", json.dumps(data["summary"], indent=1), "```", ""]
            out += [*sweep_table(data["servers"]), "", *sweep_table(data["servers"], "rate_runs")]
            if data.get("steady_32_run"):
                steady = {"modelplane": {"runs": [data["steady_32_run"]]}}
                out += ["", *sweep_table(steady)]
        elif name == "embeddings":
            out += [
                "```",
                json.dumps({"in_process": data["in_process"], **data["summary"]}, indent=1),
                "```",
                "",
            ]
            out += sweep_table(data["servers"])
        else:
            keys = (
                "floor",
                "operator",
                "ratio_children_to_floor",
                "steady_state",
                "operator_process",
            )
            out += ["```", json.dumps({k: data[k] for k in keys}, indent=1), "```"]
        out.append("")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
