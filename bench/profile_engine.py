"""Where Modelplane's engine spends a var-32 run: cProfile of the step thread and of the event loop
thread, separately (the numbers behind the notes in BENCHMARKS.md).

Run: .venv/bin/python bench/profile_engine.py [--model tiny-llama]
(writes bench/results/profile_engine.txt)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # bench/ is a directory of scripts, not a package
import engine as engine_bench


def top(profile: cProfile.Profile, title: str, limit: int = 25) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream)
    stats.sort_stats("tottime").print_stats(limit)
    return f"===== {title} (sorted by own time)\n{stream.getvalue()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    import torch

    torch.set_num_threads(arguments.threads)
    m = common.load_model(arguments.model)
    prompts = common.prompt_token_ids(m.tokenizer, m.vocab_size, 32, 32, 128)
    lengths = common.capped_exponential(64, 32, 128)[:32]
    modelplane = engine_bench.Modelplane(m)
    step_profile = cProfile.Profile()
    original: Any = modelplane.engine._steps.iterate  # the step thread calls it each step

    def profiled() -> bool:
        step_profile.enable()
        try:
            return bool(original())
        finally:
            step_profile.disable()

    modelplane.engine._steps.iterate = profiled  # type: ignore[method-assign]
    loop_profile = cProfile.Profile()

    async def run() -> tuple[float, dict[str, Any]]:
        await modelplane.engine.start()
        await modelplane.run(prompts[:4], [4] * 4)
        step_profile.clear()
        began = time.perf_counter()
        loop_profile.enable()
        result = await modelplane.run(prompts, lengths)
        loop_profile.disable()
        wall = time.perf_counter() - began
        await modelplane.engine.stop(5)
        return wall, result.extra["profile"]

    wall, profile = asyncio.run(run())
    text = [
        f"{arguments.model} var-32, {sum(lengths)} tokens in {wall:.2f} s "
        f"({sum(lengths) / wall:.1f} tok/s), step profile {profile}",
        top(step_profile, "step thread"),
        top(loop_profile, "event loop thread", 15),
    ]
    path = common.RESULTS / "profile_engine.txt"
    path.write_text("\n".join(text))
    print("\n".join(text)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
