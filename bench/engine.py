"""Engine-level comparison in one process: the same model, workload and greedy decoding through

1. sequential HF `generate()`, one request at a time (the per-request reference for parity);
2. static batches: left-padded `generate()` over batches of 8 (var-8), 16 and 32 (var-32), 32
   (uniform-32) and 64 (var-64), each batch running to its longest member (only requested tokens
   count as useful); the best size is reported;
3. transformers' continuous batching (`ContinuousBatchingManager`, `paged|sdpa`, persistent and
   warmed up, per-request `max_new_tokens`, the same limits as ours: 32 rows, 4096 tokens a step);
4. Modelplane's engine (`ContinuousBatchingEngine` over `CausalLMRunner`, server defaults:
   max_batch_size 32, max_batch_tokens 4096), driven through its asyncio streams.

Workloads (seeded): prompts 32-128 tokens; `uniform-32`: 32 requests x 32 new tokens; `var-N`
(N = 8, 32, 64): the first N requests with capped-exponential output lengths (mean 32, cap 128,
/work/shared/notes/servers.md §4.3 W2). All requests arrive at t=0; EOS never stops a sequence.

Run: .venv/bin/python bench/engine.py   (writes bench/results/engine.json and engine.png; ~12 min)
and, for SmolLM2's var-64 (~9 min):
     .venv/bin/python bench/engine.py --models smollm2 --workloads var-64 \
         --output engine-smollm2-var64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # bench/ is a directory of scripts, not a package

PROMPT_LOW, PROMPT_HIGH = 32, 128
UNIFORM_TOKENS = 32
VAR_MEAN, VAR_CAP = 32, 128
STATIC_SIZES = {8: (8,), 32: (16, 32), 64: (64,)}
# What one run covers by default, sized to finish in under 15 minutes on the 2-core box: SmolLM2's
# var-64 (another ~9 minutes, most of it the sequential baseline and a 64-row static batch) is its
# own command, see BENCHMARKS.md.
DEFAULT_WORKLOADS = {
    "tiny-llama": "uniform-32,var-8,var-32,var-64",
    "smollm2": "uniform-32,var-8,var-32",
}


@dataclass
class Run:
    wall_s: float
    outputs: list[list[int]]
    useful_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.useful_tokens / self.wall_s


def parity(outputs: list[list[int]], reference: list[list[int]]) -> dict[str, Any]:
    matches = [a == b for a, b in zip(outputs, reference, strict=True)]
    first = []
    for index, (a, b) in enumerate(zip(outputs, reference, strict=True)):
        if a != b:
            position = next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
            first.append({"request": index, "first_difference_at_token": position})
    return {"matching": sum(matches), "of": len(matches), "mismatches": first[:5]}


# --- the engines -------------------------------------------------------------------------------


class _TokenClock:
    """A generate() streamer that timestamps every new token (the first put() is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, _value: Any) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


@dataclass
class Sequential:
    """One generate() per request, each to the longest length any workload asks of it. Greedy
    decoding is prefix-stable, so a shorter request's output and cost are a prefix of the longer
    one's: `cost(i, n)` is the time from calling generate() to its n-th token."""

    outputs: list[list[int]]
    token_times: list[list[float]]

    def reference(self, count: int, lengths: list[int]) -> list[list[int]]:
        return [self.outputs[i][: lengths[i]] for i in range(count)]

    def run(self, count: int, lengths: list[int]) -> Run:
        wall = sum(self.token_times[i][lengths[i] - 1] for i in range(count))
        return Run(wall, self.reference(count, lengths), sum(lengths[:count]))


def sequential(m: common.LoadedModel, prompts: list[list[int]], lengths: list[int]) -> Sequential:
    import torch

    outputs, token_times = [], []
    with torch.inference_mode():
        for index, (prompt, length) in enumerate(zip(prompts, lengths, strict=True)):
            clock = _TokenClock()
            input_ids = torch.tensor([prompt])
            began = time.perf_counter()
            generated = m.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=length,
                do_sample=False,
                streamer=clock,
            )
            outputs.append(generated[0, len(prompt) :].tolist())
            token_times.append([moment - began for moment in clock.times])
            if index % 16 == 15:
                common.log(f"  sequential {index + 1}/{len(prompts)}")
    return Sequential(outputs, token_times)


def static_batches(
    m: common.LoadedModel, prompts: list[list[int]], lengths: list[int], batch_size: int
) -> Run:
    import torch

    pad = int(m.model.generation_config.pad_token_id)
    outputs: list[list[int]] = []
    steps = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(prompts), batch_size):
            batch = prompts[first : first + batch_size]
            wanted = lengths[first : first + batch_size]
            width = max(len(prompt) for prompt in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, prompt in enumerate(batch):
                input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
                attention[row, width - len(prompt) :] = 1
            generated = m.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max(wanted),
                do_sample=False,
            )
            steps += max(wanted)
            outputs.extend(
                generated[row, width : width + wanted[row]].tolist() for row in range(len(batch))
            )
    return Run(time.perf_counter() - started, outputs, sum(lengths), {"decode_steps": steps})


class HFContinuousBatching:
    """transformers' ContinuousBatchingManager, created once per model and warmed up."""

    def __init__(self, m: common.LoadedModel) -> None:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        from transformers.generation.continuous_batching.utils import WorkloadHints

        self.m = m
        config = GenerationConfig(
            max_new_tokens=VAR_CAP,
            do_sample=False,
            eos_token_id=-1,
            pad_token_id=m.model.generation_config.pad_token_id,
        )
        hints = WorkloadHints(
            max_prompt_length=PROMPT_HIGH, max_generated_length=VAR_CAP, num_requests=64
        )
        # The same limits as Modelplane's defaults (32 rows, 4096 tokens a step). The KV cache is
        # sized explicitly: on CPU the default takes 90% of free RAM (it OOM-killed a run here).
        # 80 pages of 256 tokens hold 64 requests of <= 256 tokens each.
        limits = ContinuousBatchingConfig(
            num_blocks=80, max_batch_tokens=4096, max_requests_per_batch=32
        )
        self.manager = m.model.init_continuous_batching(
            generation_config=config, continuous_batching_config=limits, workload_hints=hints
        )
        self.manager.warmup()
        self.manager.start()
        self.attention = str(m.model.config._attn_implementation)

    def run(self, prompts: list[list[int]], lengths: list[int]) -> Run:
        started = time.perf_counter()
        ids = [
            self.manager.add_request(prompt, max_new_tokens=length, eos_token_id=-1)
            for prompt, length in zip(prompts, lengths, strict=True)
        ]
        results: dict[str, list[int]] = {}
        while len(results) < len(ids):
            result = self.manager.get_result(timeout=1.0)
            if result is None:
                if not self.manager.is_running():
                    raise RuntimeError("transformers' continuous batching thread stopped")
                continue
            if result.is_finished():
                if result.error:
                    raise RuntimeError(result.error)
                results[result.request_id] = list(result.generated_tokens)
        wall = time.perf_counter() - started
        return Run(wall, [results[i] for i in ids], sum(lengths))

    def close(self) -> None:
        self.manager.stop(block=True, timeout=10)
        self.m.model.destroy_cached_continuous_batching_manager()


class StepRecorder:
    """An EngineObserver that keeps what each step did (the engine-side profile)."""

    def __init__(self) -> None:
        self.steps: list[Any] = []

    def on_step(self, stats: Any) -> None:
        self.steps.append(stats)

    def on_request_finished(self, stats: Any) -> None:
        pass

    def on_rejected(self, reason: str) -> None:
        pass

    def on_embedding_batch(self, batch_size: int, tokens: int, duration_s: float) -> None:
        pass

    def summary(self, wall_s: float) -> dict[str, Any]:
        steps = self.steps
        busy = sum(step.duration_s for step in steps)
        return {
            "steps": len(steps),
            "mean_batch_size": statistics.fmean(step.batch_size for step in steps) if steps else 0,
            "prefill_steps": sum(1 for step in steps if step.prefill_tokens),
            "step_time_s": busy,
            "outside_steps_s": wall_s - busy,
        }


class Modelplane:
    """Modelplane's engine with the server's default limits, sharing the already loaded model."""

    def __init__(self, m: common.LoadedModel, max_batch_size: int = 32) -> None:
        import torch

        from modelplane_server.engine.contract import GenerationConfig
        from modelplane_server.engine.detokenize import TextCodec
        from modelplane_server.engine.generation import ContinuousBatchingEngine
        from modelplane_server.model.causal_lm import CausalLMRunner

        self.recorder = StepRecorder()
        context_length = int(m.model.config.max_position_embeddings)
        runner = CausalLMRunner(m.model, torch.device("cpu"), max_batch_size, context_length)
        codec = TextCodec(m.tokenizer, m.name, context_length)
        self.engine = ContinuousBatchingEngine(
            runner,
            codec,
            GenerationConfig(max_batch_size=max_batch_size, max_queue=1024),
            eos_token_ids=(),
            observer=self.recorder,
        )

    async def run(self, prompts: list[list[int]], lengths: list[int]) -> Run:
        from modelplane_server.engine.contract import GenerationRequest, SamplingParams

        async def one(index: int, prompt: list[int], length: int) -> list[int]:
            params = SamplingParams(max_tokens=length, temperature=0.0, ignore_eos=True)
            tokens: list[int] = []
            async for delta in self.engine.generate(
                GenerationRequest(str(index), tuple(prompt), params)
            ):
                tokens.extend(delta.token_ids)
            return tokens

        self.recorder.steps = []
        started = time.perf_counter()
        outputs = await asyncio.gather(
            *(one(i, p, n) for i, (p, n) in enumerate(zip(prompts, lengths, strict=True)))
        )
        wall = time.perf_counter() - started
        return Run(wall, list(outputs), sum(lengths), {"profile": self.recorder.summary(wall)})


# --- the comparison ----------------------------------------------------------------------------


def best_of(runs: list[Run]) -> Run:
    return min(runs, key=lambda run: run.wall_s)


def bench_model(name: str, repeats: int, selected: set[str]) -> dict[str, Any]:  # noqa: PLR0915  # one script
    common.log(f"{name}: loading")
    m = common.load_model(name)
    prompts = common.prompt_token_ids(m.tokenizer, m.vocab_size, 64, PROMPT_LOW, PROMPT_HIGH)
    var_lengths = common.capped_exponential(64, VAR_MEAN, VAR_CAP)
    workloads = {"uniform-32": (prompts[:32], [UNIFORM_TOKENS] * 32)}
    for count in STATIC_SIZES:
        workloads[f"var-{count}"] = (prompts[:count], var_lengths[:count])
    workloads = {name: work for name, work in workloads.items() if name in selected}
    needed = max(len(work_prompts) for work_prompts, _ in workloads.values())

    # Warm-up: first calls allocate and pick kernels.
    static_batches(m, prompts[:4], [4] * 4, 4)
    sequential(m, prompts[:1], [4])

    common.log(f"{name}: sequential generate(), {needed} requests")
    longest = [max(n, UNIFORM_TOKENS) if i < 32 else n for i, n in enumerate(var_lengths)]
    seq = sequential(m, prompts[:needed], longest[:needed])
    references: dict[str, list[list[int]]] = {}
    results: dict[str, Any] = {}
    for workload, (work_prompts, lengths) in workloads.items():
        references[workload] = seq.reference(len(work_prompts), lengths)
        run = seq.run(len(work_prompts), lengths)
        results[workload] = {
            "requests": len(work_prompts),
            "useful_tokens": sum(lengths),
            "longest_output": max(lengths),
            "engines": {
                "sequential generate()": {"tokens_per_s": run.tokens_per_s, "wall_s": run.wall_s}
            },
        }

    # Two copies of the weights: transformers' manager switches its model to paged attention.
    modelplane = Modelplane(m)
    cb_model = common.load_model(name)
    began = time.perf_counter()
    hf = HFContinuousBatching(cb_model)
    init_s = time.perf_counter() - began
    loop = asyncio.new_event_loop()
    loop.run_until_complete(modelplane.engine.start())
    loop.run_until_complete(modelplane.run(prompts[:4], [4] * 4))  # warm-up
    hf.run(prompts[:4], [4] * 4)  # warm-up

    # The batched engines take turns, round by round, so drift in the machine's load (other
    # people's tests share these cores) falls on all of them alike; each keeps its best round.
    for workload, (work_prompts, lengths) in workloads.items():
        sizes = (32,) if workload == "uniform-32" else STATIC_SIZES[len(work_prompts)]
        rounds = repeats if workload == "var-32" else 1
        static_runs: dict[int, list[Run]] = {size: [] for size in sizes}
        ours_runs: list[Run] = []
        hf_runs: list[Run] = []
        for round_index in range(rounds):
            common.log(f"{name} {workload}: round {round_index + 1}/{rounds}")
            for size in sizes:
                static_runs[size].append(static_batches(m, work_prompts, lengths, size))
            ours_runs.append(loop.run_until_complete(modelplane.run(work_prompts, lengths)))
            hf_runs.append(hf.run(work_prompts, lengths))
        reference = references[workload]
        static = {}
        for size, runs in static_runs.items():
            run = best_of(runs)
            static[str(size)] = {
                "tokens_per_s": run.tokens_per_s,
                "wall_s": run.wall_s,
                "all_rounds_tokens_per_s": [r.tokens_per_s for r in runs],
                "parity": parity(run.outputs, reference),
            }
        best = max(static, key=lambda size: static[size]["tokens_per_s"])
        engines = results[workload]["engines"]
        engines["static batch (best)"] = {**static[best], "batch_size": int(best)}
        results[workload]["static_batch_sizes"] = static
        run = best_of(ours_runs)
        engines["modelplane"] = {
            "tokens_per_s": run.tokens_per_s,
            "wall_s": run.wall_s,
            "all_rounds_tokens_per_s": [r.tokens_per_s for r in ours_runs],
            "parity": parity(run.outputs, reference),
            "parity_all_rounds": all(r.outputs == reference for r in ours_runs),
            "profile": run.extra["profile"],
        }
        run = best_of(hf_runs)
        engines["transformers CB"] = {
            "tokens_per_s": run.tokens_per_s,
            "wall_s": run.wall_s,
            "all_rounds_tokens_per_s": [r.tokens_per_s for r in hf_runs],
            "parity": parity(run.outputs, reference),
            "attention": hf.attention,
            "init_s": init_s,
        }
    loop.run_until_complete(modelplane.engine.stop(5.0))
    loop.close()
    hf.close()

    uniform = results.get("uniform-32")
    ceiling = uniform["engines"]["static batch (best)"]["tokens_per_s"] if uniform else math.nan
    for workload, result in results.items():
        engines = result["engines"]
        ours = engines["modelplane"]["tokens_per_s"]
        result["ratios"] = {
            "modelplane / sequential": ours / engines["sequential generate()"]["tokens_per_s"],
            "modelplane / best static": ours / engines["static batch (best)"]["tokens_per_s"],
            "modelplane / transformers CB": ours / engines["transformers CB"]["tokens_per_s"],
            "modelplane / uniform static-32 ceiling": ours / ceiling,
        }
        common.log(
            f"{name} {workload}: "
            + ", ".join(f"{k} {v['tokens_per_s']:.1f} tok/s" for k, v in engines.items())
        )
    return {
        "model": name,
        "parameters": m.parameters,
        "attention": str(m.model.config._attn_implementation),
        "workloads": results,
    }


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = data["models"]
    figure, axes_list = plt.subplots(
        1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False
    )
    engines = ["sequential generate()", "static batch (best)", "transformers CB", "modelplane"]
    for axes, model in zip(axes_list[0], models, strict=True):
        workloads = list(model["workloads"])
        width = 0.2
        for index, engine in enumerate(engines):
            values = [model["workloads"][w]["engines"][engine]["tokens_per_s"] for w in workloads]
            positions = [i + (index - 1.5) * width for i in range(len(workloads))]
            axes.bar(positions, values, width, label=engine)
        axes.set_xticks(range(len(workloads)), workloads)
        axes.set_ylabel("useful output tokens/s")
        axes.set_title(f"{model['model']} ({model['parameters'] / 1e6:.0f}M, fp32, CPU)")
        axes.legend(fontsize=8)
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle("Engine level: same model, workload and greedy decoding, one process")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny-llama,smollm2")
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds of the batched engines on var-32 (best kept)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: see BENCHMARKS.md on contention)"
    )
    parser.add_argument(
        "--workloads",
        default="",
        help="comma list for every model (default: "
        + "; ".join(f"{model}: {names}" for model, names in DEFAULT_WORKLOADS.items())
        + ")",
    )
    parser.add_argument("--append", action="store_true", help="add to the existing result file")
    parser.add_argument("--output", default="engine")
    arguments = parser.parse_args()
    import torch

    torch.set_num_threads(arguments.threads)
    torch.manual_seed(common.SEED)
    started = time.perf_counter()
    data: dict[str, Any] = {
        "benchmark": "engine",
        "environment": {**common.environment(), "torch_threads": arguments.threads},
        "command": " ".join([".venv/bin/python", "bench/engine.py", *sys.argv[1:]]),
        "models": [],
    }
    path = common.RESULTS / f"{arguments.output}.json"
    if arguments.append and path.exists():  # add models to an earlier run's file
        earlier = json.loads(path.read_text())
        data["models"] = earlier["models"]
        data["earlier_runs"] = [
            {"command": earlier["command"], "environment": earlier["environment"]},
            *earlier.get("earlier_runs", []),
        ]
    for name in arguments.models.split(","):
        workloads = arguments.workloads or DEFAULT_WORKLOADS.get(name, "uniform-32,var-32")
        data["models"].append(bench_model(name, arguments.repeats, set(workloads.split(","))))
        data["duration_s"] = time.perf_counter() - started
        common.write_result(arguments.output, data)  # after each model: a partial run still counts
    plot(data, path.with_suffix(".png"))
    common.log(f"wrote {path} in {data['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
